"""gRPC: the generated protocol's loader, tensors on the wire, the servers' build and
servicers, clients, the servers' model store and split runs."""
