#!/usr/bin/env bash
# The bundled default, end to end on a fresh machine: set up .venv from requirements.txt, prepare the
# spoken digits shipped in data/digits/, train the small DeepSpeech2 of configs/digits.yaml, evaluate it
# on the two speakers it never heard (WER per speaker; greedy, then beam search with a bigram LM of the
# training transcripts), and transcribe one of their recordings.
#
#   bash scripts/run_digits.sh            # reuses the environment, the manifests and a finished training
#   bash scripts/run_digits.sh --fresh    # trains again from scratch
#   bash scripts/run_digits.sh --TrainingConfig.epochs 2   # any other argument goes to train.py and eval.py
#
# Writes data_digits/ (manifests) and runs/digits/ (checkpoints, train_log.jsonl, train_log.png, the
# JSON reports of the held-out speakers, the bigram LM). DS2_DIGITS_RUN=DIR puts the run elsewhere.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/setup_env.sh"
cd "$repo"

config=configs/digits.yaml
run_dir="${DS2_DIGITS_RUN:-runs/digits}"
report="$run_dir/digits_test_output"
report_lm="$run_dir/digits_test_output_beam_lm"
# A recording of a held-out speaker (theo saying "seven"): the model never heard this voice.
sample=data/digits/recordings/7_theo_12.flac

fresh=0
overrides=(--CheckpointConfig.ckpt_path "$run_dir/ckpt" --EvalConfig.save_output "$report")
for arg in "$@"; do
    if [ "$arg" = "--fresh" ]; then fresh=1; else overrides+=("$arg"); fi
done

started=$SECONDS
stage() { printf '\n== %s  (%d s so far)\n' "$1" "$((SECONDS - started))"; }

stage "1/6 prepare the spoken digits (held-out test speakers: george, theo)"
"$PYTHON" mindaudio/data/digits.py --root_path data_digits

stage "2/6 train ($config)"
if [ "$fresh" = 1 ]; then rm -rf "$run_dir/ckpt"; fi
"$PYTHON" train.py -c "$config" "${overrides[@]}"
train_seconds=$((SECONDS - started))

stage "3/6 evaluate on the held-out speakers (greedy decoding)"
"$PYTHON" eval.py -c "$config" "${overrides[@]}"

stage "4/6 evaluate again with beam search and a bigram LM of the training speakers' transcripts"
# The LM weights (EvalConfig.alpha, beta) come from the config.
cat data_digits/train/txt/*.txt > "$run_dir/train_transcripts.txt"
"$PYTHON" scripts/build_ngram_lm.py "$run_dir/train_transcripts.txt" "$run_dir/digits_bigram.arpa" \
    --order 2 -c "$config"
"$PYTHON" eval.py -c "$config" "${overrides[@]}" --EvalConfig.save_output "$report_lm" \
    --EvalConfig.decoder_type beam --EvalConfig.lm_path "$run_dir/digits_bigram.arpa"

stage "5/6 transcribe $sample (reference: SEVEN)"
"$PYTHON" transcribe.py -c "$config" "${overrides[@]}" --checkpoint "$run_dir/ckpt/DeepSpeech-best.ckpt" "$sample"

stage "6/6 WER per held-out speaker"
echo "greedy decoding:"
"$PYTHON" scripts/digits_report.py "$report.json"
echo "beam search + bigram LM:"
"$PYTHON" scripts/digits_report.py "$report_lm.json"
printf '\ndone in %d s (up to the end of training: %d s); training curves: %s\n' \
    "$((SECONDS - started))" "$train_seconds" "$run_dir/ckpt/train_log.png"
