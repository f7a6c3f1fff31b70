"""The DNS controller: upstreams, request/response routing, the cache, the domain -> kernel feed."""
