"""The project's XLA:CPU flag defaults (cnnjax/runtime/xla_env.py): reductions through
YNNPACK, nothing else; a user's own setting of the flag wins; CNNJAX_NO_XLA_DEFAULTS=1
leaves XLA's defaults."""

import os

from cnnjax.runtime import xla_env

FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def test_defaults_route_only_reductions_to_ynnpack(monkeypatch):
    monkeypatch.delenv("CNNJAX_NO_XLA_DEFAULTS", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    xla_env.apply_cpu_defaults()
    flags = os.environ["XLA_FLAGS"].split()
    assert flags == ["--xla_force_host_platform_device_count=2", f"{FLAG}=reduce"]


def test_a_users_flag_wins_and_the_opt_out_leaves_xla_alone(monkeypatch):
    monkeypatch.delenv("CNNJAX_NO_XLA_DEFAULTS", raising=False)
    monkeypatch.setenv("XLA_FLAGS", f"{FLAG}=")
    xla_env.apply_cpu_defaults()
    assert os.environ["XLA_FLAGS"] == f"{FLAG}="
    monkeypatch.setenv("CNNJAX_NO_XLA_DEFAULTS", "1")
    monkeypatch.setenv("XLA_FLAGS", "")
    xla_env.apply_cpu_defaults()
    assert os.environ["XLA_FLAGS"] == ""
