"""The dev harness: what tests, ``scripts/demo.py`` and ``benchmarks/`` share, with one copy of each helper.

    procs       free ports, the production environment, starting a command with a log, stopping by pid
    services    the real ``cloudcore``, ``edgecore`` and ``kubage-mapper`` commands with their configs
    pki         a throwaway CA with server and node certificates
    cluster     the control plane of ``scripts/control_plane.py`` as a subprocess
    containerd  a private containerd with the locally built images
    mosquitto   a private mosquitto on a free loopback port
    stats       percentiles

Only tests, scripts and benchmarks may import it (an import-linter contract in pyproject.toml): no component
ships with or depends on it.
"""
