"""Fake device roots for HPC_MM_DEVICE_ROOT (environments/devices.py, health.py): a node's dev/ and its
vendor tools, which answer in the formats the vendors document (npu-smi's `info -m`, `-t health`,
`-t ecc`; hccn_tool's `-link -g`; nvidia-smi's CSV query). A node's answers are files beside the tool,
so that a test can make a healthy device sick while the job runs."""

from __future__ import annotations

import os
from pathlib import Path

NPU_SMI = r"""#!/bin/sh
here=$(dirname "$0")
case "$*" in
  "info -m") cat "$here/answers/map" ;;
  "info -t health -i "*) cat "$here/answers/health-$5" ;;
  "info -t ecc -i "*) cat "$here/answers/ecc-$5" ;;
  *) echo "Usage: npu-smi info -t TYPE -i ID -c CHIP" >&2; exit 1 ;;
esac
"""
HCCN_TOOL = r"""#!/bin/sh
cat "$(dirname "$0")/answers/link-$2"
"""
NVIDIA_SMI = r"""#!/bin/sh
here=$(dirname "$0")
cat "$here/answers/query"
exit "$(cat "$here/answers/rc" 2>/dev/null || echo 0)"
"""
MAP_HEAD = (
    "        NPU ID                         Chip ID                        Chip Logic ID                  Chip Name\n"
)


def _write(path: Path, text: str, executable: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if executable:
        os.chmod(path, 0o755)


def npu_health_text(status: str = "OK", code: str = "NA", information: str = "NA") -> str:
    return (
        f"        Health Status                  : {status}\n"
        f"        Error Code                     : {code}\n"
        f"        Error Information              : {information}\n"
    )


def npu_ecc_text(card: int, double_bit: int = 0) -> str:
    return (
        f"        NPU ID                                   : {card}\n"
        "        HBM Single Bit Error Count               : 0\n"
        f"        HBM Double Bit Error Count               : {double_bit}\n"
        "        HBM Single Bit Aggregate Total Err Cnt   : 0\n"
        f"        HBM Double Bit Aggregate Total Err Cnt   : {double_bit}\n"
        "        HBM Single Bit Isolated Pages Count      : 0\n"
        "        HBM Double Bit Isolated Pages Count      : 0\n"
    )


def npu_node(root: Path, node: str, devices: int = 2, sick: dict[int, str] | None = None, ecc: dict | None = None,
             links: dict[int, str] | None = None, hccn: bool = True) -> Path:  # fmt: skip
    """A node with `devices` NPUs (davinci0..N-1, one chip a card); `sick`: device -> Health Status;
    `ecc`: device -> double-bit errors; `links`: device -> link status (UP by default)."""
    base = root / node
    (base / "dev").mkdir(parents=True, exist_ok=True)
    (base / "dev" / "davinci_manager").touch()
    sbin = base / "usr" / "local" / "sbin"
    _write(sbin / "npu-smi", NPU_SMI, executable=True)
    rows = "".join(f"        {i:<31}0{'':<30}{i:<31}Ascend910B3\n" for i in range(devices))
    _write(sbin / "answers" / "map", MAP_HEAD + rows)
    for i in range(devices):
        (base / "dev" / f"davinci{i}").touch()
        set_npu(root, node, i, (sick or {}).get(i, "OK"), (ecc or {}).get(i, 0))
        if hccn:
            tools = base / "usr" / "local" / "Ascend" / "driver" / "tools"
            _write(tools / "hccn_tool", HCCN_TOOL, executable=True)
            _write(tools / "answers" / f"link-{i}", f"link status: {(links or {}).get(i, 'UP')}\n")
    return base


def set_npu(root: Path, node: str, card: int, status: str = "OK", double_bit: int = 0) -> None:
    answers = root / node / "usr" / "local" / "sbin" / "answers"
    code = "NA" if status == "OK" else "0x80E18005"
    _write(answers / f"health-{card}", npu_health_text(status, code, "NA" if status == "OK" else "HBM ECC fault"))
    _write(answers / f"ecc-{card}", npu_ecc_text(card, double_bit))


def gpu_node(root: Path, node: str, devices: int = 2, uncorrected: dict[int, int] | None = None,
             lost: bool = False) -> Path:  # fmt: skip
    base = root / node
    (base / "dev").mkdir(parents=True, exist_ok=True)
    bin_ = base / "usr" / "bin"
    _write(bin_ / "nvidia-smi", NVIDIA_SMI, executable=True)
    for i in range(devices):
        (base / "dev" / f"nvidia{i}").touch()
    if lost:
        _write(bin_ / "answers" / "query", "Unable to determine the device handle for GPU0000:07:00.0: Unknown Error\n")
        _write(bin_ / "answers" / "rc", "15")
    else:
        rows = "".join(
            f"{i}, 00000000:{7 + i:02X}:00.0, {(uncorrected or {}).get(i, 0)}, No, No\n" for i in range(devices)
        )
        _write(bin_ / "answers" / "query", rows)
    return base
