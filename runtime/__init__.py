"""cbldm.runtime: the lean beamline runtime (numpy, scipy, onnxruntime; never torch).

PDF physics, file I/O, kernel matrices and structure recovery live here, and training
imports them from here, so the physics exists once.
"""
