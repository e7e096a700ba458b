"""The sign-in page: shown before any session, so no navigation, and the form carries the
double-submit value rather than a session's CSRF token."""

from __future__ import annotations

from cosmos.console.views._html import Page, h, layout, message


def signin_page(pre: str, error: str = "", next_url: str = "/") -> str:
    body = (
        (message(error, error=True) if error else "")
        + '<form class="signin" method="post" action="/signin">'
        + f'<input type="hidden" name="pre" value="{h(pre)}">'
        + f'<input type="hidden" name="next" value="{h(next_url)}">'
        + '<label for="token">Platform token</label>'
        + '<textarea id="token" name="token" rows="5" required autocomplete="off" spellcheck="false"'
        + ' placeholder="eyJ..."></textarea>'
        + '<p class="hint">Make one with <code>cosmos token create --tenant default --role admin</code> '
        + "(roles: viewer, submitter, operator, admin). The console acts with it on your behalf; it is "
        + "kept on the server, never in the page.</p>"
        + '<button type="submit">Sign in</button></form>'
    )
    return layout(Page("Sign in", None), body)
