//! A YAML document as a small tree whose every node remembers where it stood
//! in the file, so that validation can point at the exact line and column.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// 1-based line and column of a node in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl From<Marker> for Pos {
    fn from(m: Marker) -> Self {
        Pos { line: m.line(), column: m.col() + 1 }
    }
}

#[derive(Debug, Clone)]
pub enum Node {
    Map(Pos, Vec<(String, Pos, Node)>),
    Seq(Pos, Vec<Node>),
    /// A scalar with its text and whether it was quoted (quoted text is never a number).
    Scalar(Pos, String, bool),
    Null(Pos),
}

impl Node {
    pub fn pos(&self) -> Pos {
        match self {
            Node::Map(p, _) | Node::Seq(p, _) | Node::Scalar(p, _, _) | Node::Null(p) => *p,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Node::Map(..) => "a mapping",
            Node::Seq(..) => "a list",
            Node::Scalar(..) => "a scalar",
            Node::Null(..) => "null",
        }
    }
}

/// A syntax error, positioned.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

enum Frame {
    Map(Pos, Vec<(String, Pos, Node)>, Option<(String, Pos)>),
    Seq(Pos, Vec<Node>),
}

/// How deeply mappings and lists may nest. rollouts.yml needs four levels; the
/// limit keeps a hostile file from building a tree too deep to walk or drop.
pub const MAX_DEPTH: usize = 32;

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    documents: Vec<Node>,
    error: Option<SyntaxError>,
}

impl Builder {
    fn open(&mut self, frame: Frame, pos: Pos) {
        if self.stack.len() >= MAX_DEPTH {
            if self.error.is_none() {
                self.error = Some(SyntaxError {
                    pos,
                    message: format!("mappings and lists nest deeper than {MAX_DEPTH} levels here; rollouts.yml needs at most 4"),
                });
            }
            return;
        }
        self.stack.push(frame);
    }

    fn push_value(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.documents.push(node),
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, entries, pending_key)) => match pending_key.take() {
                Some((key, key_pos)) => entries.push((key, key_pos, node)),
                None => match node {
                    Node::Scalar(pos, text, _) => *pending_key = Some((text, pos)),
                    Node::Null(pos) => *pending_key = Some((String::new(), pos)),
                    other => {
                        if self.error.is_none() {
                            self.error = Some(SyntaxError {
                                pos: other.pos(),
                                message: "a mapping key must be a plain string".into(),
                            });
                        }
                        *pending_key = Some((String::new(), other.pos()));
                    }
                },
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from(mark);
        match ev {
            Event::MappingStart(..) => self.open(Frame::Map(pos, Vec::new(), None), pos),
            Event::SequenceStart(..) => self.open(Frame::Seq(pos, Vec::new()), pos),
            Event::MappingEnd | Event::SequenceEnd => {
                let node = match self.stack.pop() {
                    // A block mapping's start event is marked after its first key;
                    // point at the first key instead, where a reader looks.
                    Some(Frame::Map(p, entries, _)) => {
                        let at = entries.first().map(|(_, key_pos, _)| *key_pos).unwrap_or(p);
                        Node::Map(at, entries)
                    }
                    Some(Frame::Seq(p, items)) => Node::Seq(p, items),
                    None => return,
                };
                self.push_value(node);
            }
            Event::Scalar(text, style, _, _) => {
                let quoted = !matches!(style, TScalarStyle::Plain);
                let node = if !quoted && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL") {
                    Node::Null(pos)
                } else {
                    Node::Scalar(pos, text, quoted)
                };
                self.push_value(node);
            }
            Event::Alias(_) => {
                if self.error.is_none() {
                    self.error = Some(SyntaxError {
                        pos,
                        message: "YAML aliases are not supported in rollouts.yml; write the value out".into(),
                    });
                }
                self.push_value(Node::Null(pos));
            }
            _ => {}
        }
    }
}

/// Parses every document of `text`. Events are pulled one at a time (the
/// parser's own `load` recurses once per nesting level, which a few KB of
/// nested lists turn into a stack overflow), and reading stops at the first
/// error, so an over-deep file costs no more than its first [`MAX_DEPTH`] levels.
pub fn load(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, mark) = parser.next_token().map_err(|e| SyntaxError {
            pos: Pos::from(*e.marker()),
            // The scanner's own bound on flow nesting ([[[...), which it reaches
            // while looking ahead, before the events reach MAX_DEPTH.
            message: if e.info() == "recursion limit exceeded" {
                format!("mappings and lists nest deeper than {MAX_DEPTH} levels here; rollouts.yml needs at most 4")
            } else {
                e.info().to_string()
            },
        })?;
        if event == Event::StreamEnd {
            break;
        }
        builder.on_event(event, mark);
        if let Some(e) = builder.error.take() {
            return Err(e);
        }
    }
    Ok(builder.documents)
}
