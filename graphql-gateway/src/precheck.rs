//! The cheap pass over a request's tokens, run before parsing, validation and
//! planning. Those are the expensive steps an abusive document aims at: a
//! megabyte of aliases, or fragments that spread each other twice per level
//! so that their expansion doubles with every level. This pass reads the text
//! once, keeps a few counters per definition, and refuses as soon as a limit
//! is passed, so a refusal costs at most one scan of the text.
//!
//! What it counts:
//! * tokens (it stops reading at the first token over the limit);
//! * aliases, as written (each fragment once per spread);
//! * selection depth, with fragments spliced in where they are spread;
//! * the expanded selection count: every field once for each way it is
//!   reached through fragment spreads. It is computed per fragment from the
//!   counts of the fragments it spreads (saturating), never by expanding
//!   them, so a document whose expansion is 2^40 fields is refused after
//!   reading its few hundred bytes.
//!
//! Counts are upper bounds of what normalisation later sees (`@skip` and
//! merging only remove fields), so nothing this pass lets through can blow
//! up later, and the exact limits after normalisation still apply.

use std::collections::HashMap;

/// The limits this pass enforces (from `limits:` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenLimits {
    pub max_tokens: usize,
    pub max_aliases: usize,
    pub max_depth: usize,
    pub max_expanded_selections: u64,
}

/// Why a document was refused: the message names the limit and its
/// configuration key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Per definition (an operation or a fragment), what was counted in its own text.
#[derive(Debug, Default)]
struct Definition<'t> {
    /// Set for fragments.
    fragment: Option<&'t str>,
    fields: u64,
    aliases: u64,
    depth: usize,
    /// (fragment name, selection depth of the spread)
    spreads: Vec<(&'t str, usize)>,
}

/// Counts of a definition with its spreads expanded.
#[derive(Debug, Clone, Copy, Default)]
struct Expanded {
    fields: u64,
    aliases: u64,
    depth: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'t> {
    Punct(u8),
    Spread,
    Name(&'t str),
    /// Strings and numbers: their content does not matter here.
    Value,
}

/// The lexer: GraphQL's token rules, without checking what it does not need
/// (a malformed document is left for the parser to report).
struct Lexer<'t> {
    text: &'t str,
    at: usize,
}

impl<'t> Lexer<'t> {
    fn next_token(&mut self) -> Option<Token<'t>> {
        let bytes = self.text.as_bytes();
        loop {
            let b = *bytes.get(self.at)?;
            match b {
                b' ' | b'\t' | b'\n' | b'\r' | b',' => self.at += 1,
                // The UTF-8 byte order mark (EF BB BF) is ignored like whitespace.
                0xEF if bytes[self.at..].starts_with(&[0xEF, 0xBB, 0xBF]) => self.at += 3,
                b'#' => {
                    while self.at < bytes.len()
                        && bytes[self.at] != b'\n'
                        && bytes[self.at] != b'\r'
                    {
                        self.at += 1;
                    }
                }
                _ => break,
            }
        }
        let b = bytes[self.at];
        let start = self.at;
        match b {
            b'.' if bytes[self.at..].starts_with(b"...") => {
                self.at += 3;
                Some(Token::Spread)
            }
            b'"' if bytes[self.at..].starts_with(b"\"\"\"") => {
                // Block string: ends at the first `"""` not escaped as `\"""`.
                self.at += 3;
                while self.at < bytes.len() {
                    if bytes[self.at..].starts_with(b"\\\"\"\"") {
                        self.at += 4;
                    } else if bytes[self.at..].starts_with(b"\"\"\"") {
                        self.at += 3;
                        break;
                    } else {
                        self.at += 1;
                    }
                }
                Some(Token::Value)
            }
            b'"' => {
                self.at += 1;
                while self.at < bytes.len() {
                    match bytes[self.at] {
                        b'\\' => self.at += 2,
                        b'"' => {
                            self.at += 1;
                            break;
                        }
                        // An unterminated string: the parser will say so.
                        b'\n' | b'\r' => break,
                        _ => self.at += 1,
                    }
                }
                self.at = self.at.min(bytes.len());
                Some(Token::Value)
            }
            b'_' | b'a'..=b'z' | b'A'..=b'Z' => {
                while self.at < bytes.len()
                    && matches!(bytes[self.at], b'_' | b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9')
                {
                    self.at += 1;
                }
                Some(Token::Name(&self.text[start..self.at]))
            }
            b'-' | b'0'..=b'9' => {
                self.at += 1;
                while self.at < bytes.len()
                    && matches!(
                        bytes[self.at],
                        b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'
                    )
                {
                    self.at += 1;
                }
                Some(Token::Value)
            }
            _ => {
                // Punctuators, or a character the parser will refuse; either
                // way one token. Step over a whole UTF-8 character.
                self.at += 1;
                while self.at < bytes.len() && (bytes[self.at] & 0xC0) == 0x80 {
                    self.at += 1;
                }
                Some(Token::Punct(b))
            }
        }
    }
}

/// What the name after the current token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A field (or an alias, when a `:` follows).
    Field,
    /// After `...`: `on`, or a fragment name.
    AfterSpread,
    /// After `... on` or `fragment X on`: a type name.
    TypeName,
    /// After `@`.
    Directive,
    /// After `alias :`: the aliased field, already counted.
    AliasedField,
    /// After `fragment`: the fragment's name.
    FragmentName,
}

/// Checks `text` against `limits`; Err names the first limit passed.
pub fn check(text: &str, limits: &TokenLimits) -> Result<(), Refused> {
    let mut lexer = Lexer { text, at: 0 };
    let mut definitions: Vec<Definition> = Vec::new();
    let mut tokens = 0usize;
    let mut selection_depth = 0usize;
    // Arguments, variable definitions and directive arguments: names in
    // there are not fields, and braces in there are input objects.
    let mut paren_depth = 0usize;
    let mut expect = Expect::Field;
    let mut total_aliases = 0usize;
    while let Some(token) = lexer.next_token() {
        tokens += 1;
        if tokens > limits.max_tokens {
            return Err(Refused(format!(
                "the document has more than {} tokens (limits.maxTokens); it was refused before parsing",
                limits.max_tokens
            )));
        }
        if paren_depth > 0 {
            match token {
                Token::Punct(b'(') => paren_depth += 1,
                Token::Punct(b')') => paren_depth -= 1,
                _ => {}
            }
            continue;
        }
        match token {
            Token::Punct(b'(') => paren_depth += 1,
            Token::Punct(b'{') => {
                if selection_depth == 0 && definitions.last().is_none_or(|d| d.depth > 0) {
                    // `{ ... }` alone: an anonymous query.
                    definitions.push(Definition::default());
                }
                selection_depth += 1;
                if let Some(d) = definitions.last_mut() {
                    d.depth = d.depth.max(selection_depth);
                }
                if selection_depth > limits.max_depth {
                    return Err(Refused(format!(
                        "the document nests selections more than {} levels deep (limits.maxDepth)",
                        limits.max_depth
                    )));
                }
                expect = Expect::Field;
            }
            Token::Punct(b'}') => {
                selection_depth = selection_depth.saturating_sub(1);
                expect = Expect::Field;
            }
            Token::Punct(b'@') => expect = Expect::Directive,
            Token::Punct(b':') if selection_depth > 0 => {
                if let Some(d) = definitions.last_mut() {
                    d.aliases += 1;
                }
                total_aliases += 1;
                if total_aliases > limits.max_aliases {
                    return Err(Refused(format!(
                        "the document uses more than {} aliases (limits.maxAliases)",
                        limits.max_aliases
                    )));
                }
                expect = Expect::AliasedField;
            }
            Token::Spread => expect = Expect::AfterSpread,
            Token::Name(name) if selection_depth == 0 => match (expect, name) {
                (Expect::Directive, _) => expect = Expect::Field,
                (Expect::FragmentName, _) => {
                    if let Some(d) = definitions.last_mut() {
                        d.fragment = Some(name);
                    }
                    expect = Expect::Field;
                }
                (_, "fragment") => {
                    definitions.push(Definition::default());
                    expect = Expect::FragmentName;
                }
                (_, "query" | "mutation" | "subscription") => {
                    definitions.push(Definition::default());
                }
                _ => {}
            },
            Token::Name(name) => match expect {
                Expect::AfterSpread if name == "on" => expect = Expect::TypeName,
                Expect::AfterSpread => {
                    if let Some(d) = definitions.last_mut() {
                        d.spreads.push((name, selection_depth));
                    }
                    expect = Expect::Field;
                }
                Expect::TypeName | Expect::Directive | Expect::AliasedField => {
                    expect = Expect::Field
                }
                Expect::Field | Expect::FragmentName => {
                    if let Some(d) = definitions.last_mut() {
                        d.fields += 1;
                    }
                }
            },
            _ => {}
        }
    }
    expand(&definitions, limits)
}

/// Expands the counts through fragment spreads, fragments first (in an
/// order where each comes after those it spreads), without recursion: a
/// chain of thousands of fragments must not exhaust the stack.
fn expand(definitions: &[Definition], limits: &TokenLimits) -> Result<(), Refused> {
    let fragments: HashMap<&str, usize> = definitions
        .iter()
        .enumerate()
        .filter_map(|(i, d)| d.fragment.map(|n| (n, i)))
        .collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut marks = vec![Mark::New; definitions.len()];
    let mut expanded = vec![Expanded::default(); definitions.len()];
    for root in 0..definitions.len() {
        if marks[root] != Mark::New {
            continue;
        }
        // (definition, next spread to visit)
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        marks[root] = Mark::Open;
        while let Some(&mut (at, ref mut next)) = stack.last_mut() {
            let d = &definitions[at];
            if let Some((name, _)) = d.spreads.get(*next) {
                *next += 1;
                if let Some(&target) = fragments.get(name) {
                    // A spread of a fragment being expanded is a cycle, which
                    // validation refuses; it counts nothing here.
                    if marks[target] == Mark::New {
                        marks[target] = Mark::Open;
                        stack.push((target, 0));
                    }
                }
                continue;
            }
            let mut e = Expanded {
                fields: d.fields,
                aliases: d.aliases,
                depth: d.depth,
            };
            for (name, spread_depth) in &d.spreads {
                let Some(&target) = fragments.get(name) else {
                    continue;
                };
                if marks[target] != Mark::Done {
                    continue;
                }
                let t = expanded[target];
                e.fields = e.fields.saturating_add(t.fields);
                e.aliases = e.aliases.saturating_add(t.aliases);
                // The fragment's first level sits at the spread's level.
                e.depth = e
                    .depth
                    .max(spread_depth.saturating_add(t.depth).saturating_sub(1));
            }
            expanded[at] = e;
            marks[at] = Mark::Done;
            stack.pop();
        }
    }
    let operations = definitions
        .iter()
        .zip(&expanded)
        .filter(|(d, _)| d.fragment.is_none());
    let mut selections = 0u64;
    for (_, e) in operations {
        if e.depth > limits.max_depth {
            return Err(Refused(format!(
                "with its fragments spread, the operation nests selections {} levels deep; the limit is {} (limits.maxDepth)",
                e.depth, limits.max_depth
            )));
        }
        selections = selections.saturating_add(e.fields);
    }
    if selections > limits.max_expanded_selections {
        return Err(Refused(format!(
            "with its fragments spread, the document selects {} fields; the limit is {} (limits.maxExpandedSelections)",
            if selections == u64::MAX {
                "more than 2^64".to_string()
            } else {
                selections.to_string()
            },
            limits.max_expanded_selections
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> TokenLimits {
        TokenLimits {
            max_tokens: 1000,
            max_aliases: 5,
            max_depth: 6,
            max_expanded_selections: 200,
        }
    }

    #[test]
    fn an_ordinary_query_with_strings_comments_and_arguments_passes() {
        let q = r#"
            # a comment with { braces } and a: colon
            query Q($id: ID! = "x{") @live(if: {a: 1, b: [2, 3]}) {
              user(id: $id, filter: {name: "}", tags: ["a:b"]}) { ...U  friends { ... on User { id } } }
              n: note(text: """block "{" \""" text""")
            }
            fragment U on User { id name @include(if: true) }
        "#;
        assert_eq!(check(q, &limits()), Ok(()));
    }

    #[test]
    fn aliases_are_counted_as_written() {
        let q = "{ a: f b: f c: f d: f e: f g: f }";
        let e = check(q, &limits()).expect_err("six aliases");
        assert!(e.0.contains("limits.maxAliases"), "{e}");
        // Colons inside arguments are not aliases.
        assert_eq!(
            check("{ f(a: 1, b: 2, c: 3, d: 4, e: 5, g: {h: 6}) }", &limits()),
            Ok(())
        );
    }

    #[test]
    fn tokens_stop_the_scan() {
        let q = "{ ".to_string() + &"f ".repeat(2000) + "}";
        let e = check(&q, &limits()).expect_err("2002 tokens");
        assert!(e.0.contains("1000 tokens"), "{e}");
    }

    #[test]
    fn depth_counts_fragments_where_they_are_spread() {
        assert_eq!(
            check("{ a { b { c { d { e { f } } } } } }", &limits()),
            Ok(())
        );
        let e = check("{ a { b { c { d { e { f { g } } } } } } }", &limits()).expect_err("7 deep");
        assert!(e.0.contains("limits.maxDepth"), "{e}");
        // Four levels here plus four in the fragment, the first shared: 7.
        let q = "{ a { b { c { ...F } } } } fragment F on T { d { e { f { g } } } }";
        let e = check(q, &limits()).expect_err("7 deep through a fragment");
        assert!(e.0.contains("7 levels"), "{e}");
    }

    #[test]
    fn doubling_fragments_are_refused_without_expanding_them() {
        // Each level spreads the next twice: 2^60 fields once expanded.
        let mut q = String::from("{ ...F0 }\n");
        for i in 0..60 {
            q.push_str(&format!(
                "fragment F{i} on T {{ x ...F{n} ...F{n} }}\n",
                n = i + 1
            ));
        }
        q.push_str("fragment F60 on T { x }\n");
        let e = check(&q, &limits()).expect_err("exponential");
        assert!(e.0.contains("limits.maxExpandedSelections"), "{e}");
        // A fragment used a few times is fine.
        let q = "{ a { ...F } b { ...F } } fragment F on T { x y z }";
        assert_eq!(check(q, &limits()), Ok(()));
    }

    #[test]
    fn cycles_and_unknown_fragments_are_left_to_validation() {
        let q = "{ ...A ...Nope } fragment A on T { x ...B } fragment B on T { ...A }";
        assert_eq!(check(q, &limits()), Ok(()));
    }

    #[test]
    fn a_long_fragment_chain_does_not_recurse() {
        let mut q = String::from("{ ...F0 }\n");
        for i in 0..20_000 {
            q.push_str(&format!("fragment F{i} on T {{ ...F{} }}\n", i + 1));
        }
        let big = TokenLimits {
            max_tokens: 1_000_000,
            ..limits()
        };
        assert_eq!(check(&q, &big), Ok(()));
    }
}
