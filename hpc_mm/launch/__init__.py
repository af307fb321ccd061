"""On the compute nodes: plan this process's part (`plan`), run and supervise the entry with
signals forwarded (`supervise`), and the one-machine emulation under mpirun (`local`).
"""
