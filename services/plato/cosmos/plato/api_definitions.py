"""WorkflowService's definition RPCs: RegisterDefinition, GetDefinition, ListDefinitions (part of
:class:`cosmos.plato.api.WorkflowApi`)."""

from __future__ import annotations

import hashlib
import re

from cosmos import errors
from cosmos.plato.api_common import Context, WorkflowRpcs, require
from cosmos.plato.language import parser
from cosmos.plato.v1 import definition_pb2, workflow_service_pb2
from cosmos.runtime import paging, validation

_DEFINITION_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}\Z")
"""What a definition id may look like (the parser's rule): anything else never names a definition."""


class DefinitionRpcs(WorkflowRpcs):
    """Definitions: registered from YAML, each registration of a changed text a new version."""

    async def RegisterDefinition(
        self, request: workflow_service_pb2.RegisterDefinitionRequest, context: Context
    ) -> workflow_service_pb2.RegisterDefinitionResponse:
        require(request.request_id, "request_id")
        require(request.source_yaml, "source_yaml")
        validation.check_yaml(request.source_yaml, "source_yaml")
        try:
            compiled = parser.parse(request.source_yaml)
        except errors.InvalidArgumentError as exc:
            violations = [
                errors.FieldViolation(f"source_yaml.{v.field}", v.description) for v in exc.violations
            ]
            refused = errors.InvalidArgumentError(exc.message, violations=violations)
            refused.reason = exc.reason  # the parser's reason, as it named it
            raise refused from exc
        definition = definition_pb2.WorkflowDefinition(
            definition_id=compiled.id,
            source_yaml=request.source_yaml,
            step_names=sorted(compiled.steps),
            content_hash=hashlib.sha256(request.source_yaml.encode()).hexdigest(),
        )
        definition.create_time.GetCurrentTime()
        stored = await self.store.put_definition(definition)
        return workflow_service_pb2.RegisterDefinitionResponse(definition=stored)

    async def GetDefinition(
        self, request: workflow_service_pb2.GetDefinitionRequest, context: Context
    ) -> workflow_service_pb2.GetDefinitionResponse:
        require(request.definition_id, "definition_id")
        if request.version < 0:
            raise errors.invalid("version", "must be 0 (latest) or a positive version")
        stored = await self.store.get_definition(request.definition_id, request.version)
        return workflow_service_pb2.GetDefinitionResponse(definition=stored)

    async def ListDefinitions(
        self, request: workflow_service_pb2.ListDefinitionsRequest, context: Context
    ) -> workflow_service_pb2.ListDefinitionsResponse:
        if not request.definition_id:
            query = "definitions"
            every: list[tuple[str, int | None]] = [(d, None) for d in await self.store.definition_ids()]
        else:
            # One definition: every version, newest first (an id never registered lists nothing).
            if not _DEFINITION_ID.match(request.definition_id):
                raise errors.invalid(
                    "definition_id", "must match [a-z0-9][a-z0-9._-]*, at most 128 characters"
                )
            query = f"definitions;def={request.definition_id}"
            latest, _ = await self.store.latest_version(request.definition_id)
            every = [(request.definition_id, v) for v in range(latest, 0, -1)]
        page = paging.parse(request.page_size, request.page_token, query)
        keys = every[page.offset : page.offset + page.size]
        definitions = paging.within(
            [await self.store.get_definition(d, v or 0) for d, v in keys],
            lambda d: d.ByteSize(),
            paging.MAX_PAGE_BYTES,
        )
        end = page.offset + len(definitions)
        next_token = paging.token(end, query) if end < len(every) else ""
        return workflow_service_pb2.ListDefinitionsResponse(
            definitions=definitions, next_page_token=next_token
        )
