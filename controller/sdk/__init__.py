"""p4nsm's NSM SDK: a client (NSC) with NSM's refresh and heal, and an endpoint (NSE) that
registers itself and answers Requests with addresses from a CIDR."""
