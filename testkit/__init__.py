"""The test kit: real parts on loopback that tests/, bench/ and demo/ share, one of each.

Fleet repos and the one git environment (`fleet_repos`), Git servers that serve them
(`git_server`), the installed CLI run as a user runs it (`cli`), a free loopback port
(`loopback`), a real container engine (`engine`, `private_engine`), images built from the host's
busybox (`images`), a registry (`registry`), a TCP proxy that injects network faults
(`stall_proxy`), a device lab that runs the CLI against all of them (`device_lab`), the SIGKILL
harness (`crash_harness`) and the input boundaries under fuzz (`boundaries`). Everything listens on
127.0.0.1 only.

Imports nothing from tests/, and is not part of the reconciler package (the wheel includes
`reconciler*` only): it is found as a top-level package from the repository root, by pytest's
rootdir and by `python -m bench.X` / `python -m demo.run_demo` run there.
"""
