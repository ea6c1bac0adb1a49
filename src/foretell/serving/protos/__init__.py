"""Generated modules of the Open Inference Protocol over gRPC; rebuild them with `make protos`."""
