"""Network Service Mesh wire contract: protos in ``proto/`` and the modules generated from them.

Regenerate with ``python -m nsm_api.generate``; import e.g. ``from nsm_api import connection_pb2``.
"""
