"""What tests, load tests and fault drills share: a local cluster on free ports, the
chat protocol's client, traffic accounting, recovery maths and result writers."""
