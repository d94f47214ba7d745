"""CTC decoding, pure numpy on the host.

Layout (each module imports only those above it in this list, never a sibling below):
  hypothesis.py  Hypothesis and WordTiming (what every decoder returns), log_softmax, normalise_spaces
  ngram.py       word n-gram LMs in ARPA format, estimated in pure Python
  greedy.py      GreedyDecoder (best path), the one greedy decoder
  beam.py        BeamSearchDecoder (pyctcdecode, optional KenLM LM and hotwords)
  select.py      build_decoder(config): the decoder EvalConfig.decoder_type asks for
"""
