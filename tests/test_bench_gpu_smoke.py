"""bench/bench_gpu.py runs end to end without a GPU (tiny FLUX, tiny size): the GPU benchmark stays runnable."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_gpu  # noqa: E402


def test_gpu_benchmark_smoke_run_on_cpu(monkeypatch, capsys):
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.setattr(sys, "argv", ["bench_gpu.py", "--device", "cpu"])
    bench_gpu.main()
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("bf16", "fp8"))]
    assert [(r[0], r[2], r[3]) for r in rows] == [
        ("bf16", "text", "10"), ("bf16", "photo", "5"), ("fp8", "text", "10"), ("fp8", "photo", "5")]
    assert all(float(r[4].rstrip("s")) > 0 and float(r[5].rstrip("s")) > 0 for r in rows)


def test_fp8_storage_casts_at_run_time():
    linear = torch.nn.Linear(8, 4)
    fp8 = bench_gpu.Fp8Linear(linear, torch.float8_e4m3fn)
    assert fp8.weight.dtype == torch.float8_e4m3fn
    x = torch.randn(3, 8)
    ref = torch.nn.functional.linear(x, linear.weight.to(torch.float8_e4m3fn).float(), linear.bias)
    torch.testing.assert_close(fp8(x), ref.detach())
