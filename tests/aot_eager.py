"""torch.compile through dynamo and AOTAutograd, without inductor's C++ codegen (tens of seconds
per model on this box). bench/gpu.py's dry run (tests/test_bench_gpu.py) compiles with inductor."""


def without_codegen(compile_):
    return lambda net, **kw: compile_(net, backend="aot_eager", **kw)
