"""Parts of bench_routing: the trace, the policies, the replica simulation."""
