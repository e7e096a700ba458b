"""Built-in step workers: handlers written with the SDK like any user's, run beside Plato.

:mod:`~cosmos.runners.stratum` serves ``job:`` steps by running them on Stratum;
:mod:`~cosmos.runners.plato` is ``cosmos plato``, the Plato server with that runner in the same
process. Plato itself knows neither the SDK nor its runners: it and they meet only in
:mod:`cosmos.protocol`.
"""
