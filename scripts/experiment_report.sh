#!/usr/bin/env bash
# Render one finished DVC experiment's results with `agd report`, the generator of the main results,
# into reports/experiments/<name>/ (results.md, its reports and figures), for the README to cite.
#   bash scripts/experiment_report.sh nfe1000        # after `dvc exp run ... -n nfe1000`
# The experiment's reports come from its Git ref (they are cache: false outputs, committed there).
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: scripts/experiment_report.sh EXPERIMENT_NAME}
ref=$(git for-each-ref --sort=creatordate --format='%(refname)' refs/exps | grep "/${name}\$" | tail -1 || true)
if [ -z "$ref" ]; then
  echo "experiment_report: no experiment named $name (dvc exp list --all-commits lists them)" >&2
  exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/reports"
git show "$ref:params.yaml" > "$work/params.yaml"
for f in $(git ls-tree --name-only "$ref" reports/ | grep -E '\.(json|csv)$'); do
  git show "$ref:$f" > "$work/$f"
done
out=reports/experiments/$name
rm -rf "$out"
mkdir -p "$out"
# the results' provenance line names the experiment's commit (the render runs outside the repository)
(cd "$work" && PATH="$OLDPWD/.venv/bin:$PATH" AGD_REPORT_COMMIT="$(git -C "$OLDPWD" rev-parse --short "$ref") (experiment $name)" agd report)
cp "$work"/reports/*.json "$work"/reports/*.csv "$work"/reports/*.md "$work"/reports/*.png "$out"/
# benchmarks' records (real_architectures, dit_variance, sampling_speed_*, ...) are not this experiment's
for f in "$out"/*.json; do
  case "$(basename "$f")" in
    metrics.json|quality.json|timing.json|train.json|classifier.json|sweep.json|nfe.json|samplers.json|transfer.json) ;;
    *) rm -f "$f" ;;
  esac
done
for stage in sweep nfe samplers transfer; do  # stages the experiment left off: a header, an empty summary
  if [ ! -f "$out/$stage.csv" ] || [ "$(wc -l < "$out/$stage.csv")" -le 1 ]; then rm -f "$out/$stage".*; fi
done
git show "$ref:dvc.lock" > "$out/dvc.lock"  # what ran: every stage's params and dependency hashes
echo "experiment_report: $ref -> $out"
