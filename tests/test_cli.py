"""``reward-server`` as a user meets it: a typo or a port in use is one line and a documented exit
code (reward_server/errors.py), never a traceback. Real subprocesses, started side by side."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from reward_server.errors import EXIT_ADDRESS_IN_USE, EXIT_USAGE


def run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "reward_server", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )


def test_bad_settings_and_a_busy_port_are_one_line_and_an_exit_code(tmp_path) -> None:
    rollouts = tmp_path / "in.jsonl"
    rollouts.write_text('{"response": "yes", "ground_truth": "yes", "task_type": "yes_no"}\n')
    not_a_db = tmp_path / "state.db"
    not_a_db.write_text("these bytes are not SQLite\n")
    under_a_file = tmp_path / "in.jsonl" / "out.jsonl"  # a path whose "directory" is a file
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    cases = {
        "reduction": (["serve", "--bmas-reduction", "foo"], None, EXIT_USAGE,
                      ("invalid setting bmas_reduction (--bmas-reduction / REWARD_BMAS_REDUCTION) = 'foo': "
                      "Input should be 'sum' or 'mean'")),
        "profile": (["serve", "--profile", "foo"], None, EXIT_USAGE, "Input should be 'mixed-r1' or 'robust'"),
        "env port": (["serve"], {"REWARD_PORT": "abc"}, EXIT_USAGE,
                     "invalid setting port (--port / REWARD_PORT) = 'abc': Input should be a valid integer"),
        "unknown flag": (["serve", "--modle-path", "x"], None, EXIT_USAGE, "unrecognized arguments: --modle-path"),
        "offline flag": (["score", "in.jsonl", "out.jsonl", "--batch-size", "many"], None, EXIT_USAGE,
                         "argument --batch-size: invalid int value: 'many'"),
        "env in offline": (["score", str(rollouts), str(tmp_path / "out.jsonl")], {"REWARD_FORMAT_WEIGHT": "heavy"}, EXIT_USAGE,
                           "invalid setting format_weight (--format-weight / REWARD_FORMAT_WEIGHT) = 'heavy'"),
        "busy port": (["serve", "--host", "127.0.0.1", "--port", str(port)], None, EXIT_ADDRESS_IN_USE,
                      f"127.0.0.1:{port} is already in use by another process"),
        "state not a database": (["serve", "--log-level", "warning", "--port", "0", "--state-path", str(not_a_db)],
                                 None, EXIT_USAGE,
                                 f"--state-path {not_a_db}: cannot use it as the state store (file is not a database)"),
        "state in no directory": (["serve", "--log-level", "warning", "--port", "0", "--state-path", str(under_a_file)],
                                  None, EXIT_USAGE, f"--state-path {under_a_file}: cannot use it as the state store"),
        "output in no directory": (["score", str(rollouts), str(under_a_file)], None, EXIT_USAGE,
                                   f"{under_a_file}: cannot write the output there ({rollouts} is not a directory)"),
    }
    runs = {name: run_cli(args, env) for name, (args, env, _, _) in cases.items()}
    try:
        for name, (_, _, code, text) in cases.items():
            _out, err = runs[name].communicate(timeout=120)
            assert runs[name].returncode == code, (name, err)
            assert text in err, (name, err)
            assert len(err.strip().splitlines()) == 1 and err.startswith("reward-server: "), (name, err)
    finally:
        taken.close()
