#!/usr/bin/env bash
# Shows that the engine's fixture tests are not blind: plants each deliberate mistake of
# mutants.py in the engine's own source, runs engine/tests/fixtures.rs, and requires it to fail.
#
#   bash engine/testdata/engine_mutants.sh [NAME ...]    (default: every mutant)
#
# Edits engine/src in place and restores each file from git afterwards (also on Ctrl-C), so it
# refuses to run while engine/src has uncommitted changes. Extra environment (for example
# ATEN_CPU_CAPABILITY=default) is passed to the tests. Each mutant rebuilds the engine: a few
# minutes in all.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
if ! git diff --quiet -- engine/src; then
    echo "engine_mutants.sh: engine/src has uncommitted changes; commit or stash them first" >&2
    exit 2
fi
trap 'git checkout -q -- engine/src' EXIT

# name | file | perl substitution (run with -0pi, so it may span lines)
mutants=(
    'rope_theta_1pct|engine/src/decoder.rs|s/f_pow_scalar\(cfg\.rope_theta,/f_pow_scalar(cfg.rope_theta * 1.01,/'
    'realign_without_normalisation|engine/src/latent.rs|s/let a = hf\.f_matmul\(w\)\?;\s*normalise_to\(&a, target_norm\)/let _ = target_norm; Ok(hf.f_matmul(w)?)/'
    'kv_swapped_in_last_layer|engine/src/context.rs|s/(c\.copy_range_to\(layers, body\)\?;)/$1\n        { let per = body.len() \/ (2 * c.num_layers()); let n = body.len(); let (a, b) = body[n - 2 * per..].split_at_mut(per); a.swap_with_slice(b); }/'
    'prompt_without_chat_template|engine/src/prompt.rs|s/(pub fn render\(&self, prompt: &str\) -> Result<String> \{)/$1\n        if !prompt.is_empty() { return Ok(prompt.to_owned()); }/'
)
want=("$@")
blind=()
ran=0
for m in "${mutants[@]}"; do
    IFS='|' read -r name file subst <<<"$m"
    if [ ${#want[@]} -gt 0 ] && [[ ! " ${want[*]} " == *" $name "* ]]; then continue; fi
    ran=$((ran + 1))
    perl -0pi -e "$subst" "$file"
    if git diff --quiet -- "$file"; then
        echo "mutant $name: the substitution matched nothing in $file (update this script)" >&2
        exit 2
    fi
    log=$(mktemp)
    # --workspace --all-features: the feature set of scripts/test.sh's run, so only the engine
    # crate and this test are rebuilt, not their dependencies.
    if cargo test -q --workspace --all-features --test fixtures >"$log" 2>&1; then
        echo "mutant $name: NOT REJECTED (every fixture test passed)"
        blind+=("$name")
    else
        failed=$(grep -E '^    [a-z_0-9]+$' "$log" | tr -d ' ' | sort -u | paste -sd' ' -)
        echo "mutant $name: rejected; failing tests: ${failed:-see log}"
        grep -m1 -E 'relative error|assertion|panicked' "$log" | sed 's/^/    first: /' || true
    fi
    rm -f "$log"
    git checkout -q -- "$file"
done
if [ ${#blind[@]} -gt 0 ]; then
    echo "the engine tests are blind to: ${blind[*]}"
    exit 1
fi
echo "all $ran mutants rejected"
