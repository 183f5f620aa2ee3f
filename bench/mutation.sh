#!/usr/bin/env bash
# Mutation testing of the security core (mutmut; configuration in pyproject.toml [tool.mutmut]).
#
#   bench/mutation.sh                   every module of the security core
#   bench/mutation.sh vault.format      one module (mutant names are module.function__mutmut_N)
#   bench/mutation.sh 'vault.names*' 'handlers.ranges*'
#
# Needs `pip install -r bench/requirements-mutation.txt`. Not part of the default test run: it
# runs the in-process tests once per mutant (minutes per module on 2 cores), at nice 19.
# Results: `mutmut results` (survivors), `mutmut show NAME` (a mutant's diff).
set -euo pipefail
cd "$(dirname "$0")/.."
MUTMUT="${MUTMUT:-$(command -v mutmut || echo .venv/bin/mutmut)}"
patterns=()
for module in "$@"; do
    case "$module" in
        *'*'*) patterns+=("$module") ;;
        *) patterns+=("$module.*") ;;
    esac
done
export VAULT_IN_PROCESS_ONLY=1
nice -n 19 "$MUTMUT" run --max-children "${MUTATION_JOBS:-2}" "${patterns[@]}"
"$MUTMUT" results --all true 2>/dev/null | awk '
    /: killed|: survived|: no tests|: timeout|: suspicious|: skipped|: caught by type check/ {
        split($1, name, "."); module = name[1] "." name[2]; sub(/\.x.*/, "", module)
        status = $0; sub(/^[^:]*: /, "", status); count[module, status]++; modules[module] = 1; statuses[status] = 1
    }
    END { for (m in modules) { line = m; for (s in statuses) if (count[m, s]) line = line "  " s " " count[m, s]; print line } }' | sort
