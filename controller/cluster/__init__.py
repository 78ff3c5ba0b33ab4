"""Replicas of one fabric on etcd: the client (etcd.py) and the leader election (election.py).

The interface the rest of the controller builds on (kept stable):

- `store = EtcdStore(...)` (controller/fabric/etcd_store.py; made by store_backend.open_store
  from the `store` setting); `await store.start()` connects, refuses another fabric's prefix
  (FabricMismatch) and a replica id already running (DuplicateReplica), loads the cache and
  joins the election. `store.election` is the replica's `Election`.
- A **term** (`Term`) is one leadership: `term.revision` is the etcd revision at which this
  replica created the leader key. Every later term, whoever wins it, has a higher revision: a
  P4Runtime election id derived from it rises with every term.
- "I lead since revision R": `election.term` is `Term(revision=R, ...)`; `await
  election.wait_term()` returns it; `election.on_change` callbacks get it. When they run, the
  store's cache already holds everything etcd held at R.
- "I lost it": `election.term` becomes None and `on_change` callbacks get None (etcd says the
  lease is gone or the leader key went, e.g. because the followers heard no heartbeat of this
  leader for store_leader_suspect s and revoked its lease; or, cut off, no renewal succeeded for TTL +
  store_timeout: a cut-off leader may believe it leads a little after etcd let its lease go,
  which fencing makes harmless: etcd refuses its writes, the switches its lower election id).
  Writes made from then on are refused; queued writes of the lost term are refused by etcd and
  counted (`store.refused_writes`). The replica campaigns again by itself, as a follower; a new
  win is a new term with a higher revision.
- Following the desired state: a follower's store cache is kept current by a watch; read it
  with the store's usual methods (`all()`, `records(kind)`, ...); `store.listeners` get
  `(key, value or None)` for each change, keys `c/<conn id>`, `m/<key>`, `r/<kind>/<key>`;
  `store.revision` is the etcd revision the cache is at.
- `election.watching` (an asyncio.Event) is set while the campaign watches the leader key: a
  follower with it set takes over within milliseconds of the leader key going, which a dead
  leader's key does store_leader_suspect s after its last heartbeat (`<prefix>heartbeat`).
- `election.leader` is the leader key's value as last seen (`replica`, `nsm_address`, ...);
  `await election.replicas()` lists the running replicas; `election.status()` is one line of it.
"""
