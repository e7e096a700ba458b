"""Security of the mesh: the platform CA, mutual TLS, callers and their permissions, tokens, audit.

- :mod:`cosmos.security.pki`: the CA and workload certificates (SPIFFE-style identities);
- :mod:`cosmos.security.tls`: gRPC credentials that reload rotated files;
- :mod:`cosmos.security.principals`: callers, roles and permissions;
- :mod:`cosmos.security.tokens`: platform tokens (signed JWTs);
- :mod:`cosmos.security.auth`: the interceptor that authenticates, authorizes and audits every call;
- :mod:`cosmos.security.config`: the flags every process takes.
"""
