//! Layer-name patterns (`*`, `fc?`, `conv[12]`) selecting which layers a recipe prunes.
//!
//! A small glob matcher of our own (the crate depends only on burn/serde/thiserror): `*` matches
//! any run of characters (dots included), `?` one character, `[abc]` / `[a-z]` / `[!x]` a class.

use crate::error::PruneError;

#[derive(Debug, Clone)]
enum Token {
    Star,
    Any,
    Lit(char),
    Class {
        negated: bool,
        items: Vec<(char, char)>,
    },
}

/// A parsed glob pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    tokens: Vec<Token>,
}

impl Pattern {
    /// Parses `text`; an unclosed `[` class is an error naming the `layers` field.
    pub fn new(text: &str) -> Result<Self, PruneError> {
        let chars: Vec<char> = text.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' => tokens.push(Token::Star),
                '?' => tokens.push(Token::Any),
                '[' => {
                    let mut j = i + 1;
                    let negated = j < chars.len() && chars[j] == '!';
                    if negated {
                        j += 1;
                    }
                    let mut items = Vec::new();
                    // A `]` right after `[` / `[!` is a literal member, as in shell globs.
                    let mut first = true;
                    while j < chars.len() && (chars[j] != ']' || first) {
                        first = false;
                        if j + 2 < chars.len() && chars[j + 1] == '-' && chars[j + 2] != ']' {
                            items.push((chars[j], chars[j + 2]));
                            j += 3;
                        } else {
                            items.push((chars[j], chars[j]));
                            j += 1;
                        }
                    }
                    if j >= chars.len() {
                        return Err(PruneError::invalid(
                            "layers",
                            format!("{text:?}"),
                            "unclosed `[` in pattern",
                        ));
                    }
                    tokens.push(Token::Class { negated, items });
                    i = j;
                }
                c => tokens.push(Token::Lit(c)),
            }
            i += 1;
        }
        Ok(Self {
            text: text.to_string(),
            tokens,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `name` matches the whole pattern.
    pub fn matches(&self, name: &str) -> bool {
        let s: Vec<char> = name.chars().collect();
        // Iterative wildcard matching with single-star backtracking (linear for one `*`,
        // quadratic worst case; names are short).
        let (mut p, mut i) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while i < s.len() {
            if p < self.tokens.len() {
                match &self.tokens[p] {
                    Token::Star => {
                        star = Some((p, i));
                        p += 1;
                        continue;
                    }
                    t if token_matches(t, s[i]) => {
                        p += 1;
                        i += 1;
                        continue;
                    }
                    _ => {}
                }
            }
            match star {
                Some((sp, si)) => {
                    p = sp + 1;
                    i = si + 1;
                    star = Some((sp, si + 1));
                }
                None => return false,
            }
        }
        self.tokens[p..].iter().all(|t| matches!(t, Token::Star))
    }
}

fn token_matches(t: &Token, c: char) -> bool {
    match t {
        Token::Star | Token::Any => true,
        Token::Lit(l) => *l == c,
        Token::Class { negated, items } => {
            items.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
        }
    }
}

/// Indices of `names` selected by any of `patterns`, in `names` order (each selected once).
///
/// Every pattern must select at least one name; otherwise the error lists all `names`, so a
/// typo in a recipe is caught before training starts.
pub fn select(names: &[&str], patterns: &[String]) -> Result<Vec<usize>, PruneError> {
    if patterns.is_empty() {
        return Err(PruneError::invalid(
            "layers",
            "[]",
            "must hold at least one layer pattern (use [\"*\"] for every layer)",
        ));
    }
    let mut selected = vec![false; names.len()];
    for text in patterns {
        let pat = Pattern::new(text)?;
        let mut hit = false;
        for (k, name) in names.iter().enumerate() {
            if pat.matches(name) {
                selected[k] = true;
                hit = true;
            }
        }
        if !hit {
            return Err(PruneError::NoMatchingLayer {
                pattern: text.clone(),
                available: names.join(", "),
            });
        }
    }
    Ok((0..names.len()).filter(|&k| selected[k]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        Pattern::new(p).unwrap().matches(s)
    }

    #[test]
    fn glob_matching() {
        assert!(m("*", "fc1"));
        assert!(m("*", ""));
        assert!(m("fc*", "fc1"));
        assert!(!m("fc*", "conv1"));
        assert!(m("fc?", "fc2"));
        assert!(!m("fc?", "fc12"));
        assert!(m("conv[12]", "conv2"));
        assert!(!m("conv[12]", "conv3"));
        assert!(m("conv[!3]", "conv1"));
        assert!(!m("conv[!3]", "conv3"));
        assert!(m("layer[0-2]", "layer1"));
        assert!(m("*.weight", "Mlp.layers.0.weight"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(!m("fc1", "fc10"));
    }

    #[test]
    fn bad_pattern_names_field() {
        let e = Pattern::new("conv[1").unwrap_err();
        assert!(e.to_string().contains("`layers`"), "{e}");
    }

    #[test]
    fn select_in_model_order_and_reports_misses() {
        let names = ["conv1", "conv2", "fc1", "fc2"];
        let got = select(&names, &["fc*".into(), "conv2".into(), "fc1".into()]).unwrap();
        assert_eq!(got, vec![1, 2, 3]);
        let e = select(&names, &["fc9".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "prune layer pattern `fc9` matches no layer; available layers: conv1, conv2, fc1, fc2"
        );
        assert!(select(&names, &[]).is_err());
    }
}
