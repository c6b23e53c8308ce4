# Sourced by benchmarks/diagnose.sh and benchmarks/rerun.sh: the data and teachers of the committed quality run, on
# any machine, without retraining.
#
#   offline_data WORK          WORK/data: prepare.py's data from the apt lists of 2026-11-29 (docs/benchmarks.md,
#                              "Data"); refused when the lists' sha256 differ from benchmarks/results/data_manifest.json's
#                              inputs (another split: the teachers would not fit)
#   run_teacher WORK TASK      prints WORK/teachers/TASK.pt, the run's teacher, taken from git history
#                              (1f2f84e:benchmarks/run_state/TASK/teacher/checkpoint_best.pt) if not there yet
offline_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

offline_data() {
  local work=$1 lists=$1/lists
  [ -f "$work/data/manifest.json" ] && return 0
  mkdir -p "$lists"
  ls /var/lib/apt/lists/*_i18n_Translation-*.lz4 >/dev/null 2>&1 || apt-get update -o Acquire::Languages=en,de
  cp /var/lib/apt/lists/*_i18n_Translation-*.lz4 "$lists/"
  cp "$offline_root"/examples/debian_descriptions/apt_lists_2026-11-29/*.lz4 "$lists/"
  python3 - "$lists" "$offline_root/benchmarks/results/data_manifest.json" <<'EOF'
import hashlib, json, os, sys
lists, manifest = sys.argv[1:]
want = json.load(open(manifest))["inputs"]
have = {name: hashlib.sha256(open(os.path.join(lists, name), "rb").read()).hexdigest() for name in want
        if os.path.isfile(os.path.join(lists, name))}
differ = sorted(name for name in want if have.get(name) != want[name])
if differ:
    sys.exit(f"offline_data: these apt lists differ from the benchmark's (data_manifest.json inputs): {differ}; "
             "the split, the vocabulary and so the teachers would not fit")
EOF
  python3 "$offline_root/examples/debian_descriptions/prepare.py" --out "$work/data" --spm-vocab 1000 \
    --max-source-words 120 --lists-dir "$lists"
}

run_teacher() {
  local teacher=$1/teachers/$2.pt
  mkdir -p "$1/teachers"
  [ -f "$teacher" ] || git -C "$offline_root" show "1f2f84e:benchmarks/run_state/$2/teacher/checkpoint_best.pt" \
    > "$teacher"
  echo "$teacher"
}
