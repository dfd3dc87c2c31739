//! Field paths and their spans: a [`SpanIndex`] records, for every key path of a parsed TOML
//! document (`cameras[0].zones[1].polygon[2]`), where its key and its value sit in the text, so
//! that errors found on the typed config can be located.

use std::collections::HashMap;
use std::ops::Range;
use toml::de::{DeTable, DeValue};

// ---------------------------------------------------------------------------------------------
// Field paths and their spans

/// Where one key path sits in the text.
#[derive(Debug, Clone)]
pub(super) struct Node {
    pub(super) path: String,
    /// The key's span; `None` for array elements.
    pub(super) key: Option<Range<usize>>,
    /// The value's span (for a `[table]` or `[[array]]` only its header).
    pub(super) value: Range<usize>,
    /// Element count when the value is an array.
    pub(super) array_len: Option<usize>,
}

/// Every key path of a parsed document, with its spans.
#[derive(Debug, Default)]
pub(super) struct SpanIndex {
    pub(super) nodes: Vec<Node>,
    pub(super) by_path: HashMap<String, usize>,
}

impl SpanIndex {
    pub(super) fn build(root: &DeTable<'_>) -> Self {
        let mut index = SpanIndex::default();
        index.add_table("", root);
        index
    }

    pub(super) fn add_table(&mut self, prefix: &str, table: &DeTable<'_>) {
        for (key, value) in table.iter() {
            let path = join_key(prefix, key.get_ref());
            self.add_value(path, Some(key.span()), value);
        }
    }

    pub(super) fn add_value(
        &mut self,
        path: String,
        key: Option<Range<usize>>,
        value: &toml::Spanned<DeValue<'_>>,
    ) {
        let array_len = value.get_ref().as_array().map(|a| a.len());
        self.by_path.insert(path.clone(), self.nodes.len());
        self.nodes.push(Node {
            path: path.clone(),
            key,
            value: value.span(),
            array_len,
        });
        match value.get_ref() {
            DeValue::Table(table) => self.add_table(&path, table),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.add_value(format!("{path}[{i}]"), None, item);
                }
            }
            _ => {}
        }
    }

    /// The innermost key path whose key or value span contains `span`; `""` when none does.
    pub(super) fn path_at(&self, span: &Range<usize>) -> &str {
        self.nodes
            .iter()
            .flat_map(|n| n.key.iter().chain([&n.value]).map(move |r| (n, r)))
            .filter(|(_, r)| span_contains(r, span))
            .min_by_key(|(n, r)| (r.len(), usize::MAX - n.path.len()))
            .map_or("", |(n, _)| n.path.as_str())
    }

    /// The value span of `path`, or of its nearest ancestor present in the text (a field left
    /// to its default is reported at its table).
    pub(super) fn span_of(&self, path: &str) -> Option<Range<usize>> {
        if let Some(&i) = self.by_path.get(path) {
            return Some(self.nodes[i].value.clone());
        }
        self.nodes
            .iter()
            .filter(|n| is_ancestor(&n.path, path))
            .max_by_key(|n| n.path.len())
            .map(|n| n.value.clone())
    }

    pub(super) fn array_len(&self, path: &str) -> Option<usize> {
        self.by_path
            .get(path)
            .and_then(|&i| self.nodes[i].array_len)
    }
}

/// Whether `outer` contains `inner`; an empty `inner` may also touch `outer`'s end (a syntax
/// error just after an unterminated value).
pub(super) fn span_contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start
        && inner.end <= outer.end
        && (inner.start < outer.end || inner.is_empty())
}

/// Whether `ancestor` is a proper prefix of `path` ending at a path-segment boundary.
pub(super) fn is_ancestor(ancestor: &str, path: &str) -> bool {
    path.len() > ancestor.len()
        && path.starts_with(ancestor)
        && (ancestor.is_empty() || matches!(path.as_bytes()[ancestor.len()], b'.' | b'['))
}

/// `prefix.key`, with the key quoted when it is not a bare TOML key.
pub(super) fn join_key(prefix: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}
