"""The demo pipelines behind `styxcache demo` and `examples/mrtrix_pipeline.py`.

Not part of the caching library: it sits on top of it, like the command line.
`mrtrix` runs NiWrap's MRtrix3 wrappers with the real MRtrix3 tools on
synthetic images (import the pipeline from there); `builtin` runs POSIX tools
when MRtrix3 is absent; `report` holds what both record; `command` is the
`styxcache demo` command.
"""
