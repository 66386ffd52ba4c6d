"""Link emulation: the user-space shaping proxy, tc tbf between network namespaces, and
probes of how close an emulated link comes to its target."""
