"""The test kit: real parts on loopback that tests/, bench/ and demo/ share.

A real container engine (`engine`, `private_engine`), images built from the host's busybox
(`images`), a registry (`registry`), Git servers and fleet repos (`git_server`), a TCP proxy that
injects network faults (`stall_proxy`) and a device lab that runs the installed CLI against them
(`device_lab`). Everything listens on 127.0.0.1 only.

Not part of the reconciler package (the wheel includes `reconciler*` only): it is found as a
top-level package from the repository root, by pytest's rootdir and by `python -m bench.X` /
`python -m demo.run_demo` run there.
"""
