#!/usr/bin/env bash
# The bundled default, end to end on a fresh machine: set up .venv from requirements.txt, prepare the
# spoken digits shipped in data/digits/, train the small DeepSpeech2 of configs/digits.yaml on four of
# the five speakers, evaluate it on the fifth, whose voice it never heard (greedy, then beam search with
# a bigram LM of the training transcripts), and transcribe one of its recordings.
#
#   bash scripts/run_digits.sh            # reuses the environment, the manifests and a finished training
#   bash scripts/run_digits.sh --fresh    # trains again from scratch
#   bash scripts/run_digits.sh --test_speaker george   # another held-out speaker (default: theo)
#   bash scripts/run_digits.sh --TrainingConfig.epochs 2   # any other argument goes to train.py and eval.py
#
# Writes data_digits/ (manifests) and runs/digits/ (checkpoints, train_log.jsonl, train_log.png, the
# JSON reports of the held-out speaker, the bigram LM). DS2_DIGITS_DATA=DIR and DS2_DIGITS_RUN=DIR
# put them elsewhere (scripts/digits_loso.py runs every speaker as the held-out one this way).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/setup_env.sh"
cd "$repo"

config=configs/digits.yaml
data_dir="${DS2_DIGITS_DATA:-data_digits}"
run_dir="${DS2_DIGITS_RUN:-runs/digits}"
report="$run_dir/digits_test_output"
report_lm="$run_dir/digits_test_output_beam_lm"

fresh=0
test_speaker=theo
overrides=()
while [ $# -gt 0 ]; do
    case "$1" in
        --fresh) fresh=1 ;;
        --test_speaker)
            [ $# -ge 2 ] || { echo "error: --test_speaker needs a speaker's name" >&2; exit 2; }
            test_speaker="$2"; shift ;;
        *) overrides+=("$1") ;;
    esac
    shift
done
overrides=(--TrainingConfig.train_manifest "$data_dir/train/digits_train_manifest.json"
           --TrainingConfig.val_manifest "$data_dir/val/digits_val_manifest.json"
           --EvalConfig.test_manifest "$data_dir/test/digits_test_manifest.json"
           --CheckpointConfig.ckpt_path "$run_dir/ckpt" --EvalConfig.save_output "$report" "${overrides[@]}")
# A recording of the held-out speaker saying "seven": the model never heard this voice.
sample="data/digits/recordings/7_${test_speaker}_12.flac"

started=$SECONDS
stage() { printf '\n== %s  (%d s so far)\n' "$1" "$((SECONDS - started))"; }

stage "1/6 prepare the spoken digits (held-out test speaker: $test_speaker)"
"$PYTHON" mindaudio/data/digits.py --root_path "$data_dir" --test_speakers "$test_speaker"
mkdir -p "$run_dir"

stage "2/6 train ($config)"
if [ "$fresh" = 1 ]; then rm -rf "$run_dir/ckpt"; fi
"$PYTHON" train.py -c "$config" "${overrides[@]}"
train_seconds=$((SECONDS - started))

stage "3/6 evaluate on the held-out speaker (greedy decoding)"
"$PYTHON" eval.py -c "$config" "${overrides[@]}"

stage "4/6 evaluate again with beam search and a bigram LM of the training speakers' transcripts"
# The LM weights (EvalConfig.alpha, beta) come from the config.
cat "$data_dir"/train/txt/*.txt > "$run_dir/train_transcripts.txt"
"$PYTHON" scripts/build_ngram_lm.py "$run_dir/train_transcripts.txt" "$run_dir/digits_bigram.arpa" \
    --order 2 -c "$config"
"$PYTHON" eval.py -c "$config" "${overrides[@]}" --EvalConfig.save_output "$report_lm" \
    --EvalConfig.decoder_type beam --EvalConfig.lm_path "$run_dir/digits_bigram.arpa"

stage "5/6 transcribe $sample (reference: SEVEN)"
"$PYTHON" transcribe.py -c "$config" "${overrides[@]}" --checkpoint "$run_dir/ckpt/DeepSpeech-best.ckpt" "$sample"

stage "6/6 WER of the held-out speaker"
echo "greedy decoding:"
"$PYTHON" scripts/digits_report.py "$report.json"
echo "beam search + bigram LM:"
"$PYTHON" scripts/digits_report.py "$report_lm.json"
printf '\ndone in %d s (up to the end of training: %d s); training curves: %s\n' \
    "$((SECONDS - started))" "$train_seconds" "$run_dir/ckpt/train_log.png"
