//! The prompt tokenizer (`tokenizer.json` of the checkpoint), and the small T5-style
//! tokenizer that tiny test checkpoints ship.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// Turns prompts into T5 token ids, `</s>` appended by the tokenizer's post-processor.
pub struct PromptTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl PromptTokenizer {
    /// Loads `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(ModelError::MissingFile {
                path: path.to_path_buf(),
                what: "the prompt tokenizer",
            });
        }
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Self {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// The token ids of `prompt`, special tokens included.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(prompt, true)
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        Ok(encoding.get_ids().to_vec())
    }
}

/// Whole words the tiny tokenizer knows, besides single letters and digits.
const TINY_WORDS: &[&str] = &[
    "rock", "jazz", "pop", "lofi", "hip", "hop", "piano", "guitar", "guitars", "drums", "bass",
    "synth", "song", "music", "with", "and", "loud", "heavy", "soft", "happy", "sad", "calm",
    "dark", "epic", "ambient", "beat", "90s", "80s", "slow", "fast",
];

/// The pieces of the tiny tokenizer in id order: `<pad>`, `</s>`, `<unk>`, then words,
/// letters and digits with and without the word-start marker `▁`.
fn tiny_pieces() -> Vec<(String, f64)> {
    let mut pieces = vec![
        ("<pad>".to_string(), 0.0),
        ("</s>".to_string(), 0.0),
        ("<unk>".to_string(), 0.0),
        ("▁".to_string(), -2.0),
    ];
    pieces.extend(TINY_WORDS.iter().map(|w| (format!("▁{w}"), -3.0)));
    let symbols = ('a'..='z').chain('0'..='9').chain(['.', ',', '-', '\'']);
    for c in symbols {
        pieces.push((format!("▁{c}"), -6.0));
        pieces.push((c.to_string(), -6.5));
    }
    pieces
}

/// Number of tokens of the tiny tokenizer (the tiny T5's vocabulary size).
pub fn tiny_vocab_size() -> usize {
    tiny_pieces().len()
}

/// A T5-style `tokenizer.json` (Unigram, Metaspace, `$A </s>`) with a small vocabulary.
pub fn tiny_tokenizer_json() -> serde_json::Value {
    let vocab: Vec<serde_json::Value> = tiny_pieces()
        .into_iter()
        .map(|(piece, score)| serde_json::json!([piece, score]))
        .collect();
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "<pad>"), special(1, "</s>"), special(2, "<unk>")],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "WhitespaceSplit"},
            {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}
        ]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "special_tokens": {"</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}}
        },
        "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true},
        "model": {"type": "Unigram", "unk_id": 2, "vocab": vocab, "byte_fallback": false}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_tokenizer_splits_words_and_appends_eos() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|source| ModelError::Io {
            path: "tempdir".into(),
            source,
        })?;
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, tiny_tokenizer_json().to_string()).map_err(|source| {
            ModelError::Io {
                path: path.clone(),
                source,
            }
        })?;
        let tok = PromptTokenizer::from_file(&path)?;
        let ids = tok.encode("Rock piano")?;
        let pieces = tiny_pieces();
        let names: Vec<&str> = ids.iter().map(|&i| pieces[i as usize].0.as_str()).collect();
        assert_eq!(names, ["▁rock", "▁piano", "</s>"]);
        // Unknown words fall back to letters, never to nothing.
        let ids = tok.encode("zq")?;
        assert!(ids.len() >= 2 && ids.last() == Some(&1));
        assert!(ids.iter().all(|&i| (i as usize) < tiny_vocab_size()));
        Ok(())
    }
}
