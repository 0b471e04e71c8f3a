"""Translation metrics through sacreBLEU: cased BLEU with its signature, lowercased BLEU, chrF."""
from typing import Dict, Sequence


def score(hypotheses: Sequence[str], references: Sequence[str]) -> Dict[str, object]:
    """Corpus scores of detokenized hypotheses against one reference each."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    import sacrebleu  # here, not at the top: 40 ms of every worker's start-up otherwise

    hyps, refs = list(hypotheses), [list(references)]
    bleu = sacrebleu.metrics.BLEU()
    bleu_lc = sacrebleu.metrics.BLEU(lowercase=True)
    chrf = sacrebleu.metrics.CHRF()
    cased, lower = bleu.corpus_score(hyps, refs), bleu_lc.corpus_score(hyps, refs)
    chrf_score = chrf.corpus_score(hyps, refs)
    return {
        "bleu": round(cased.score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "bleu_lowercase": round(lower.score, 2),
        "bleu_lowercase_signature": str(bleu_lc.get_signature()),
        "chrf": round(chrf_score.score, 2),
        "chrf_signature": str(chrf.get_signature()),
        "sentences": len(hyps),
    }
