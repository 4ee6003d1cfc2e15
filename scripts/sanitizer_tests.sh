# Sourced by scripts/sanitize.sh and scripts/tsan.sh: the tests that run
# under the sanitizers, and how they are run.

SAE_SANITIZER_TESTS=(
  activations_test blas_test packed_gemm_test corruption_test dataset_io_test model_io_test model_store_test
  parallel_test
  model_test objective_test optimizer_test safetensors_test store_watcher_test trainer_test
  topk_screen_test
  auth_test bad_input_test batcher_test batching_rpc_test compute_pool_test crash_recovery_test
  load_faults_test
  metrics_test model_registry_test
  service_test training_jobs_test
  sae_client_test file_util_test
)

# run_sanitizer_tests BUILD_DIR NAME: runs every test, printing one line
# each and the tail of the log of any that fails; returns non-zero if any
# failed. Left out, as they measure what sanitizers change and test no
# concurrency: the resident-memory bounds (the million-row stream, the
# overload bursts), which hold only in the normal build (scripts/test.sh),
# as sanitizers hold freed memory back and add shadow memory; and under TSan
# the store's kill -9 test, whose publisher is too slow under TSan for kills
# to land after its first publish (its threads are tested by the two-process
# publish test).
run_sanitizer_tests() {
  local build="$1" name="$2" failed=0 t start
  for t in "${SAE_SANITIZER_TESTS[@]}"; do
    local filter=()
    case "$t:$name" in
      service_test:*) filter=(--gtest_filter=-*KeepsMemoryFlat*) ;;
      load_faults_test:*) filter=(--gtest_filter=-OverloadTest.*) ;;
      model_store_test:TSan) filter=(--gtest_filter=-*KillNine*) ;;
    esac
    start=$SECONDS
    if ! "$build/tests/$t" "${filter[@]}" > "$build/$t.log" 2>&1; then
      echo "$name: $t FAILED"; tail -40 "$build/$t.log"; failed=1
    else
      echo "$name: $t passed ($((SECONDS - start)) s)"
    fi
  done
  return $failed
}
