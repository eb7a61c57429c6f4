"""Fault drills: a fault injected into a live local cluster under steady traffic from
resuming clients, and what they saw (loadtests/faults.py's docstring says each figure
and target). scenarios runs them; injectors makes the faults; targets judges the
figures; report prints them."""
