"""`dnntune validate`: running chosen splits over emulated links and comparing measured
with predicted latency."""
