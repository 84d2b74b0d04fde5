//! The company directory (`--directory FILE`): who is who, for the API's
//! people search and for showing a name next to an AoR.
//!
//! What it is: a CSV file with a header line whose first five columns are
//! `aor,display_name,department,title,phone` (names compared
//! case-insensitively, trimmed); more columns are free attributes named by
//! their header. Quoting is RFC 4180's: a field may be double-quoted, `""`
//! inside quotes is one quote, and a quoted field may hold commas and line
//! breaks. Lines end in CRLF or LF, a UTF-8 byte order mark at the start is
//! ignored, blank lines are skipped and a line starting with `#` (at the
//! start of a line, outside quotes) is a comment. Every value is trimmed.
//! The `aor` column is a SIP AoR (`sip:user@domain`, or `user@domain`
//! meaning the same), kept canonical ([`Aor`]).
//!
//! Every error of a file is reported with its line (the line a record
//! starts on), not only the first: a wrong header, a row with the wrong
//! number of columns, a bad or duplicate AoR, an unterminated quote, a
//! field over [`MAX_FIELD`] bytes, more than [`MAX_ENTRIES`] entries. After
//! [`MAX_ERRORS`] errors the rest of the file is not checked.
//!
//! What it is not: no storage and no file reading (the caller reads the
//! file and hands over its text), no presence (a directory entry says
//! nothing about whether someone is there), no authorisation (who may look
//! someone up is the API's business).

use crate::aor::Aor;
use std::collections::HashMap;

/// Most entries in a directory.
pub const MAX_ENTRIES: usize = 100_000;
/// Most bytes in one field (after unquoting and trimming).
pub const MAX_FIELD: usize = 1024;
/// Errors reported before the rest of a file is given up on.
pub const MAX_ERRORS: usize = 100;

/// The columns every directory starts with, in this order.
pub const COLUMNS: [&str; 5] = ["aor", "display_name", "department", "title", "phone"];

/// One person (or room, or hunt group) of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Canonical (`sip:user@domain`).
    pub aor: String,
    pub display_name: String,
    pub department: String,
    pub title: String,
    pub phone: String,
    /// The columns after the first five: (header name, value), in header
    /// order.
    pub attributes: Vec<(String, String)>,
}

/// What is wrong with a directory file, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct DirectoryError {
    /// 1-based; the line a record starts on.
    pub line: usize,
    pub message: String,
}

/// A parsed directory: entries sorted by display name (case-insensitively),
/// then AoR.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    entries: Vec<Entry>,
    /// Canonical AoR → index in `entries`.
    by_aor: HashMap<String, usize>,
    /// Lower-cased text to search, one per entry.
    keys: Vec<Keys>,
}

/// An entry's searchable text, lower-cased once.
#[derive(Debug, Clone)]
struct Keys {
    display_name: String,
    /// The AoR without `sip:`.
    address: String,
    department: String,
    /// The user part of the AoR.
    user: String,
}

impl Keys {
    fn of(e: &Entry) -> Keys {
        let address = e.aor.strip_prefix("sip:").unwrap_or(&e.aor).to_lowercase();
        let user = address.split('@').next().unwrap_or("").to_string();
        Keys {
            display_name: e.display_name.to_lowercase(),
            address,
            department: e.department.to_lowercase(),
            user,
        }
    }

    /// `term` (lower case) is somewhere in the display name, the address
    /// or the department.
    fn contains(&self, term: &str) -> bool {
        self.display_name.contains(term)
            || self.address.contains(term)
            || self.department.contains(term)
    }

    /// `term` starts a word of the display name, the department or the user
    /// part.
    fn starts_word(&self, term: &str) -> bool {
        [&self.display_name, &self.department, &self.user]
            .into_iter()
            .any(|field| starts_word(field, term))
    }
}

/// Whether `term` occurs in `field` at the start or right after a character
/// that is not alphanumeric (`smi` starts a word of `john.smith` and of
/// `Jane Smith`, not of `Osmic`).
fn starts_word(field: &str, term: &str) -> bool {
    field.match_indices(term).any(|(at, _)| {
        field[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric())
    })
}

impl Directory {
    /// Parse a directory file; all its errors, in line order, if it has
    /// any.
    pub fn parse(text: &str) -> Result<Directory, Vec<DirectoryError>> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut records = Records::new(text);
        let mut errors = Vec::new();
        let header = match records.next() {
            None => {
                return Err(vec![DirectoryError {
                    line: 1,
                    message: format!("no header line (it starts {})", COLUMNS.join(",")),
                }])
            }
            Some(Err(e)) => return Err(vec![e]),
            Some(Ok(r)) => r,
        };
        let names = check_header(&header, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut entries: Vec<Entry> = Vec::new();
        // Canonical AoR → the line it was first seen on.
        let mut seen: HashMap<String, usize> = HashMap::new();
        for record in records {
            if errors.len() >= MAX_ERRORS {
                errors.push(DirectoryError {
                    line: record.map_or_else(|e| e.line, |r| r.line),
                    message: format!("more than {MAX_ERRORS} errors, the rest is not checked"),
                });
                break;
            }
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let fail = |message: String| DirectoryError {
                line: record.line,
                message,
            };
            if record.fields.len() != names.len() {
                errors.push(fail(format!(
                    "{} columns, the header has {}",
                    record.fields.len(),
                    names.len()
                )));
                continue;
            }
            let mut ok = true;
            for (name, value) in names.iter().zip(&record.fields) {
                if value.len() > MAX_FIELD {
                    errors.push(fail(format!(
                        "{name} is {} bytes long, more than {MAX_FIELD}",
                        value.len()
                    )));
                    ok = false;
                }
            }
            let Some(aor) = record.fields.first().and_then(|a| parse_aor(a)) else {
                let raw = record.fields.first().map_or("", String::as_str);
                errors.push(fail(format!("{} is not a SIP AoR", shown(raw))));
                continue;
            };
            if let Some(first) = seen.get(&aor) {
                errors.push(fail(format!("duplicate AoR {aor} (first on line {first})")));
                continue;
            }
            seen.insert(aor.clone(), record.line);
            if !ok {
                continue;
            }
            if entries.len() == MAX_ENTRIES {
                errors.push(fail(format!("more than {MAX_ENTRIES} entries")));
                break;
            }
            let mut fields = record.fields.into_iter().skip(1);
            let mut next = || fields.next().unwrap_or_default();
            entries.push(Entry {
                aor,
                display_name: next(),
                department: next(),
                title: next(),
                phone: next(),
                attributes: names[COLUMNS.len()..]
                    .iter()
                    .map(|name| (name.clone(), next()))
                    .collect(),
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Directory::from_entries(entries))
    }

    fn from_entries(mut entries: Vec<Entry>) -> Directory {
        entries.sort_by_cached_key(|e| (e.display_name.to_lowercase(), e.aor.clone()));
        let by_aor = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.aor.clone(), i))
            .collect();
        let keys = entries.iter().map(Keys::of).collect();
        Directory {
            entries,
            by_aor,
            keys,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of a canonical AoR.
    pub fn get(&self, aor: &str) -> Option<&Entry> {
        self.by_aor.get(aor).and_then(|&i| self.entries.get(i))
    }

    /// Every entry, in directory order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entries matching `query`, as indices into [`entries`](Self::entries)
    /// (the caller pages). Case-insensitive (Unicode lower-casing). An
    /// empty query matches every entry; otherwise each whitespace-separated
    /// term must be found in the display name, the AoR (without `sip:`) or
    /// the department. Entries where every term starts a word of the
    /// display name, the department or the user part come first; each rank
    /// is in directory order.
    pub fn search(&self, query: &str) -> Vec<usize> {
        let terms: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
        let mut words = Vec::new();
        let mut inside = Vec::new();
        for (i, keys) in self.keys.iter().enumerate() {
            if !terms.iter().all(|t| keys.contains(t)) {
                continue;
            }
            if terms.iter().all(|t| keys.starts_word(t)) {
                words.push(i);
            } else {
                inside.push(i);
            }
        }
        words.extend(inside);
        words
    }
}

/// The column names of a header record, checked: the five of [`COLUMNS`]
/// first, then distinct, non-empty attribute names.
fn check_header(header: &Record, errors: &mut Vec<DirectoryError>) -> Vec<String> {
    let names: Vec<String> = header.fields.clone();
    let fail = |message: String| DirectoryError {
        line: header.line,
        message,
    };
    let starts_right = names.len() >= COLUMNS.len()
        && names
            .iter()
            .zip(COLUMNS)
            .all(|(n, c)| n.eq_ignore_ascii_case(c));
    if !starts_right {
        errors.push(fail(format!(
            "the header must start with {}, not {}",
            COLUMNS.join(","),
            shown(&names.join(","))
        )));
        return names;
    }
    for (i, name) in names.iter().enumerate().skip(COLUMNS.len()) {
        if name.is_empty() {
            errors.push(fail(format!("column {} has no name", i + 1)));
        } else if name.len() > MAX_FIELD {
            errors.push(fail(format!(
                "column {} has a name longer than {MAX_FIELD} bytes",
                i + 1
            )));
        } else if names[..i].iter().any(|n| n.eq_ignore_ascii_case(name)) {
            errors.push(fail(format!("column {} is named twice", shown(name))));
        }
    }
    names
}

/// A canonical AoR from `sip:user@domain` (or `sips:`, with a port or
/// parameters) or a bare `user@domain`.
fn parse_aor(s: &str) -> Option<String> {
    let lower = s.get(..5).unwrap_or(s).to_ascii_lowercase();
    if lower.starts_with("sip:") || lower.starts_with("sips:") {
        return Aor::parse(s).map(Aor::into_string);
    }
    // A bare address: no scheme (a `:` before the `@` would be read as a
    // password, `tel:+1@x` as user `tel`).
    let (user, _) = s.split_once('@')?;
    if user.contains(':') {
        return None;
    }
    Aor::parse(&format!("sip:{s}")).map(Aor::into_string)
}

/// `s` quoted for a message, cut short.
fn shown(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{:?}…", &s[..i]),
        None => format!("{s:?}"),
    }
}

/// One CSV record: its fields (unquoted, trimmed) and the line it starts on.
#[derive(Debug)]
struct Record {
    line: usize,
    fields: Vec<String>,
}

/// The records of a CSV text, blank lines and comments skipped. An
/// unterminated quote is an error that ends the text.
struct Records<'a> {
    text: &'a str,
    pos: usize,
    /// The line `pos` is on.
    line: usize,
}

impl<'a> Records<'a> {
    fn new(text: &'a str) -> Records<'a> {
        Records {
            text,
            pos: 0,
            line: 1,
        }
    }

    /// Where the next `\n` or `,` (or `\n` only) is from `pos`, or the end.
    fn field_end(&self, from: usize, comma: bool) -> usize {
        self.text.as_bytes()[from..]
            .iter()
            .position(|&b| b == b'\n' || comma && b == b',')
            .map_or(self.text.len(), |p| from + p)
    }

    /// A quoted field, `pos` just after its opening quote; `pos` ends just
    /// after the closing quote. `None` if there is none.
    fn quoted(&mut self) -> Option<String> {
        let bytes = self.text.as_bytes();
        let mut value = String::new();
        loop {
            let quote = self.pos + bytes[self.pos..].iter().position(|&b| b == b'"')?;
            let piece = &self.text[self.pos..quote];
            self.line += piece.bytes().filter(|&b| b == b'\n').count();
            value.push_str(piece);
            if bytes.get(quote + 1) == Some(&b'"') {
                value.push('"');
                self.pos = quote + 2;
            } else {
                self.pos = quote + 1;
                return Some(value);
            }
        }
    }
}

impl Iterator for Records<'_> {
    type Item = Result<Record, DirectoryError>;

    fn next(&mut self) -> Option<Self::Item> {
        let bytes = self.text.as_bytes();
        loop {
            if self.pos >= bytes.len() {
                return None;
            }
            let line = self.line;
            if bytes[self.pos] == b'#' {
                let end = self.field_end(self.pos, false);
                self.pos = (end + 1).min(bytes.len());
                self.line += 1;
                continue;
            }
            let mut fields = Vec::new();
            let mut quoted_any = false;
            loop {
                let start = self.pos;
                let mut at = start;
                while matches!(bytes.get(at), Some(b' ' | b'\t')) {
                    at += 1;
                }
                let mut value = if bytes.get(at) == Some(&b'"') {
                    quoted_any = true;
                    let quote_line = self.line;
                    self.pos = at + 1;
                    match self.quoted() {
                        Some(v) => v,
                        None => {
                            self.pos = bytes.len();
                            return Some(Err(DirectoryError {
                                line: quote_line,
                                message: "a quote that is never closed".into(),
                            }));
                        }
                    }
                } else {
                    String::new()
                };
                // Unquoted text, or whatever follows a closing quote.
                let end = self.field_end(self.pos, true);
                value.push_str(&self.text[self.pos..end]);
                fields.push(value.trim().to_string());
                self.pos = end;
                match bytes.get(end) {
                    Some(b',') => self.pos += 1,
                    Some(_) => {
                        self.pos += 1;
                        self.line += 1;
                        break;
                    }
                    None => break,
                }
            }
            let blank = !quoted_any && fields.len() == 1 && fields[0].is_empty();
            if !blank {
                return Some(Ok(Record { line, fields }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    const HEADER: &str = "aor,display_name,department,title,phone";

    fn parse_ok(text: &str) -> Directory {
        Directory::parse(text).unwrap_or_else(|e| panic!("{e:?}\n{text}"))
    }

    fn errors(text: &str) -> Vec<(usize, String)> {
        match Directory::parse(text) {
            Ok(d) => panic!("accepted: {:?}", d.entries()),
            Err(e) => e.into_iter().map(|e| (e.line, e.message)).collect(),
        }
    }

    fn aors(d: &Directory, indices: &[usize]) -> Vec<String> {
        indices
            .iter()
            .map(|&i| d.entries()[i].aor.clone())
            .collect()
    }

    #[test]
    fn a_plain_directory_is_read_and_sorted() {
        let d = parse_ok(
            "aor,display_name,department,title,phone\n\
             sip:bob@Example.COM,Bob Baker,Sales,Rep,+1 555 0101\n\
             alice@example.com,alice Archer,Engineering,Developer,+1 555 0100\n\
             sip:carol@example.com;transport=tcp,Alice Archer,Support,Lead,\n",
        );
        assert_eq!(d.len(), 3);
        assert!(!d.is_empty());
        let names: Vec<(&str, &str)> = d
            .entries()
            .iter()
            .map(|e| (e.display_name.as_str(), e.aor.as_str()))
            .collect();
        // Case-insensitive by name, then by AoR.
        assert_eq!(
            names,
            [
                ("alice Archer", "sip:alice@example.com"),
                ("Alice Archer", "sip:carol@example.com"),
                ("Bob Baker", "sip:bob@example.com"),
            ]
        );
        let bob = d.get("sip:bob@example.com").unwrap();
        assert_eq!(
            *bob,
            Entry {
                aor: "sip:bob@example.com".into(),
                display_name: "Bob Baker".into(),
                department: "Sales".into(),
                title: "Rep".into(),
                phone: "+1 555 0101".into(),
                attributes: vec![],
            }
        );
        assert_eq!(d.get("sip:carol@example.com").unwrap().phone, "");
        assert!(d.get("sip:bob@Example.COM").is_none(), "by canonical AoR");
        assert!(d.get("bob@example.com").is_none());
    }

    #[test]
    fn header_variants() {
        for header in [
            HEADER,
            "AOR,Display_Name,DEPARTMENT,Title,Phone",
            " aor , display_name ,department,title, phone ",
            "\"aor\",\"display_name\",department,title,phone",
        ] {
            let d = parse_ok(&format!("{header}\nsip:a@example.com,A,B,C,D\n"));
            assert_eq!(d.entries()[0].display_name, "A", "{header}");
        }
        // A header only: an empty directory.
        let d = parse_ok(HEADER);
        assert!(d.is_empty() && d.entries().is_empty());
        assert_eq!(Directory::default().len(), 0);
        // Comments and blank lines before the header.
        let d = parse_ok(&format!(
            "# the directory\n\n   \n{HEADER}\nsip:a@example.com,A,,,\n"
        ));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn wrong_headers_are_refused() {
        for (text, line) in [
            ("aor,name,department,title,phone\nsip:a@b,A,B,C,D\n", 1),
            ("aor,display_name,department,title\nsip:a@b,A,B,C\n", 1),
            ("display_name,aor,department,title,phone\n", 1),
            ("\n# c\nsip:a@example.com,A,B,C,D\n", 3),
            ("aor,display_name,department,title,phone,\n", 1),
            ("aor,display_name,department,title,phone,room,Room\n", 1),
            ("aor,display_name,department,title,phone,title\n", 1),
        ] {
            let e = errors(text);
            assert_eq!(e.len(), 1, "{text:?}: {e:?}");
            assert_eq!(e[0].0, line, "{text:?}: {e:?}");
        }
        assert_eq!(
            errors(""),
            [(
                1,
                "no header line (it starts aor,display_name,department,title,phone)".into()
            )]
        );
        assert_eq!(errors("\u{feff}# only a comment\n").len(), 1);
        let e = Directory::parse("aor,name\n").unwrap_err();
        assert_eq!(
            e[0].to_string(),
            "line 1: the header must start with aor,display_name,department,title,phone, not \"aor,name\""
        );
    }

    #[test]
    fn quoting_commas_quotes_and_line_breaks() {
        let text = "aor,display_name,department,title,phone\n\
             \"sip:a@example.com\",\"Archer, Alice\",\"R&D \"\"Labs\"\"\",\"Head of\nEverything\",\"\"\n\
             sip:b@example.com, \"Baker, Bob\" ,Sales,\"\",1\n\
             sip:c@example.com,\"\"\"Quoted\"\"\",\"a\r\nb\",x\"y\",2\n\
             sip:d@example.com,D,\"#not a comment\",,\n";
        let d = parse_ok(text);
        let a = d.get("sip:a@example.com").unwrap();
        assert_eq!(a.display_name, "Archer, Alice");
        assert_eq!(a.department, "R&D \"Labs\"");
        assert_eq!(a.title, "Head of\nEverything");
        assert_eq!(a.phone, "");
        assert_eq!(
            d.get("sip:b@example.com").unwrap().display_name,
            "Baker, Bob"
        );
        let c = d.get("sip:c@example.com").unwrap();
        assert_eq!(c.display_name, "\"Quoted\"");
        assert_eq!(c.department, "a\r\nb");
        assert_eq!(
            c.title, "x\"y\"",
            "quotes inside an unquoted field are text"
        );
        assert_eq!(
            d.get("sip:d@example.com").unwrap().department,
            "#not a comment"
        );
        // Lines after a multi-line field keep their numbers.
        let e = errors(&format!(
            "{HEADER}\nsip:a@example.com,\"two\nlines\",,,\nsip:b@example.com,B\n"
        ));
        assert_eq!(e, [(4, "2 columns, the header has 5".into())]);
    }

    #[test]
    fn bom_crlf_comments_and_blank_lines() {
        let text = "\u{feff}# exported 2024-05-01\r\n\
             aor,display_name,department,title,phone\r\n\
             \r\n\
             # sales\r\n\
             sip:b@example.com,Bob,Sales,Rep,1\r\n\
             \t \r\n\
             #sip:x@example.com,Commented,Out,,\r\n\
             sip:a@example.com,Alice,Eng,Dev,2";
        let d = parse_ok(text);
        assert_eq!(d.len(), 2);
        assert_eq!(d.entries()[0].phone, "2");
        assert_eq!(d.entries()[1].phone, "1", "no \\r left on the last field");
        assert!(d.get("sip:x@example.com").is_none());
        // A BOM is not part of the first column's name.
        assert_eq!(parse_ok(&format!("\u{feff}{HEADER}\n")).len(), 0);
    }

    #[test]
    fn extra_columns_are_attributes_in_header_order() {
        let d = parse_ok(
            "aor,display_name,department,title,phone,Room,manager,e-mail\n\
             sip:a@example.com,Alice,Eng,Dev,1,B-204,sip:boss@example.com,alice@example.com\n",
        );
        assert_eq!(
            d.entries()[0].attributes,
            [
                ("Room".to_string(), "B-204".to_string()),
                ("manager".into(), "sip:boss@example.com".into()),
                ("e-mail".into(), "alice@example.com".into()),
            ]
        );
    }

    #[test]
    fn every_error_is_reported_with_its_line() {
        let long = "x".repeat(MAX_FIELD + 1);
        let text = format!(
            "{HEADER}\n\
             sip:a@example.com,Alice,,,\n\
             sip:b@example.com,Bob\n\
             tel:+15551234,Phone,,,\n\
             not an aor,X,,,\n\
             \n\
             sip:A@example.com,Alice again,,,\n\
             sip:a@EXAMPLE.com:5060,Alice twice,,,\n\
             a@example.com,Alice thrice,,,\n\
             sip:c@example.com,{long},,,\n\
             sip:d@example.com,\"D,,,\n\
             sip:e@example.com,never read,,,\n"
        );
        let e = errors(&text);
        let lines: Vec<usize> = e.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [3, 4, 5, 8, 9, 10, 11], "{e:#?}");
        assert_eq!(e[0].1, "2 columns, the header has 5");
        assert_eq!(e[1].1, "\"tel:+15551234\" is not a SIP AoR");
        assert_eq!(e[2].1, "\"not an aor\" is not a SIP AoR");
        assert_eq!(e[3].1, "duplicate AoR sip:a@example.com (first on line 2)");
        assert!(e[4].1.starts_with("duplicate AoR"));
        assert_eq!(
            e[5].1,
            format!(
                "display_name is {} bytes long, more than 1024",
                MAX_FIELD + 1
            )
        );
        assert_eq!(e[6].1, "a quote that is never closed");
        // The user part is case-sensitive: sip:A@ is another AoR.
        let d = parse_ok(&format!(
            "{HEADER}\nsip:a@example.com,a,,,\nsip:A@example.com,A,,,\n"
        ));
        assert_eq!(d.len(), 2);
        // A field of exactly the cap is fine.
        let d = parse_ok(&format!(
            "{HEADER}\nsip:a@example.com,{},,,\n",
            "y".repeat(MAX_FIELD)
        ));
        assert_eq!(d.entries()[0].display_name.len(), MAX_FIELD);
    }

    #[test]
    fn bare_addresses_and_odd_aors() {
        for (aor, want) in [
            ("alice@Example.com", Some("sip:alice@example.com")),
            ("SIP:alice@example.com", Some("sip:alice@example.com")),
            ("sips:alice@example.com:5061", Some("sip:alice@example.com")),
            ("sip:example.com", None),
            ("example.com", None),
            ("tel:+1@example.com", None),
            ("user:pw@example.com", None),
            ("", None),
            ("@", None),
            ("é", None),
        ] {
            assert_eq!(parse_aor(aor).as_deref(), want, "{aor:?}");
        }
    }

    #[test]
    fn too_many_errors_stop_the_check() {
        let mut text = format!("{HEADER}\n");
        for _ in 0..500 {
            text += "bad\n";
        }
        let e = errors(&text);
        assert_eq!(e.len(), MAX_ERRORS + 1);
        assert_eq!(e[MAX_ERRORS].0, MAX_ERRORS + 2);
        assert!(e[MAX_ERRORS].1.contains("the rest is not checked"));
    }

    #[test]
    fn the_entry_cap() {
        let mut text = format!("{HEADER}\n");
        for i in 0..=MAX_ENTRIES {
            text += &format!("sip:u{i}@example.com,,,,\n");
        }
        assert_eq!(
            errors(&text),
            [(MAX_ENTRIES + 2, format!("more than {MAX_ENTRIES} entries"))]
        );
        let at_cap = text.rsplitn(3, '\n').nth(2).unwrap();
        assert_eq!(parse_ok(at_cap).len(), MAX_ENTRIES);
    }

    fn staff() -> Directory {
        parse_ok(
            "aor,display_name,department,title,phone\n\
             sip:john.smith@example.com,John Smith,Sales,Rep,\n\
             sip:jsmith@example.com,Jane Smithers,Engineering,Dev,\n\
             sip:osmic@example.com,Ana Osmic,Sales,Rep,\n\
             sip:reception@example.com,Front Desk,Facilities,,\n\
             sip:zoe@example.com,Zoë Ångström,Forschung & Entwicklung,,\n",
        )
    }

    #[test]
    fn search_ranks_word_starts_first() {
        let d = staff();
        // Directory order: Ana, Front, Jane, John, Zoë.
        assert_eq!(d.search("").len(), 5);
        assert_eq!(d.search("   ").len(), 5);
        assert_eq!(
            aors(&d, &d.search("smi")),
            [
                "sip:jsmith@example.com",     // "Smithers" starts a word
                "sip:john.smith@example.com", // "smith" after the dot
                "sip:osmic@example.com",      // only inside "Osmic"
            ]
        );
        // The display name's word, in either case.
        assert_eq!(
            aors(&d, &d.search("SMITH")),
            ["sip:jsmith@example.com", "sip:john.smith@example.com"]
        );
        // Department and domain.
        assert_eq!(d.search("facil"), [1]);
        assert_eq!(d.search("example.com").len(), 5);
        // A term matched only by the domain is not a word start.
        assert_eq!(
            aors(&d, &d.search("desk example")),
            ["sip:reception@example.com"]
        );
        // Unicode lower-casing.
        assert_eq!(aors(&d, &d.search("ångström")), ["sip:zoe@example.com"]);
        assert_eq!(aors(&d, &d.search("ZOË")), ["sip:zoe@example.com"]);
        assert_eq!(aors(&d, &d.search("&")), ["sip:zoe@example.com"]);
        assert!(d.search("nobody").is_empty());
    }

    #[test]
    fn search_terms_all_have_to_match() {
        let d = staff();
        assert_eq!(
            aors(&d, &d.search("sales smith")),
            ["sip:john.smith@example.com"]
        );
        assert_eq!(
            aors(&d, &d.search("rep  sales")),
            Vec::<String>::new(),
            "title is not searched"
        );
        assert_eq!(
            aors(&d, &d.search("sales a")),
            // "a" starts "Ana"; for John it is only inside "Sales".
            ["sip:osmic@example.com", "sip:john.smith@example.com"]
        );
        assert!(d.search("sales engineering").is_empty());
        // Every index is in range and each entry shows once.
        let all = d.search("e");
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len());
        assert!(all.iter().all(|&i| i < d.len()));
    }

    // ---------------------------------------------------------------------
    // Property test
    // ---------------------------------------------------------------------

    const PIECES: &[&str] = &[
        ",",
        "\"",
        "\"\"",
        "\n",
        "\r\n",
        "\r",
        "#",
        " ",
        "\t",
        "sip:",
        "@",
        "example.com",
        "é",
        "日本",
        "\u{feff}",
        "a",
        "Z",
        "0",
        ";",
        ":",
        "\u{1F600}",
    ];

    fn value(rng: &mut StdRng) -> String {
        let mut s = String::new();
        for _ in 0..rng.random_range(0..6usize) {
            if rng.random_bool(0.3) {
                s.push(rng.random_range('a'..='z'));
            } else {
                s.push_str(PIECES[rng.random_range(0..PIECES.len())]);
            }
        }
        s.trim().to_string()
    }

    /// A field as a CSV writer might write it: quoted when it has to be,
    /// and sometimes when it does not.
    fn write_field(rng: &mut StdRng, v: &str) -> String {
        let needs = v.contains([',', '"', '\n', '\r']) || v.starts_with('#');
        if needs || rng.random_bool(0.3) {
            format!("\"{}\"", v.replace('"', "\"\""))
        } else {
            v.to_string()
        }
    }

    fn mutate(rng: &mut StdRng, text: &str) -> String {
        let mut chars: Vec<char> = text.chars().collect();
        for _ in 0..rng.random_range(1..5usize) {
            let at = rng.random_range(0..=chars.len());
            match rng.random_range(0..3) {
                0 => {
                    let piece = PIECES[rng.random_range(0..PIECES.len())];
                    chars.splice(at..at, piece.chars());
                }
                1 if at < chars.len() => {
                    let end = (at + rng.random_range(1..8usize)).min(chars.len());
                    chars.drain(at..end);
                }
                _ => chars.insert(at, rng.random::<char>()),
            }
        }
        chars.into_iter().collect()
    }

    /// No text panics the parser or a search, noise or a valid file with a
    /// few changes; a generated directory written with random quoting and
    /// line ends parses back to the same entries.
    #[test]
    fn property_written_directories_round_trip_and_nothing_panics() {
        let mut rng = StdRng::seed_from_u64(4180);
        let mut accepted = 0usize;
        for _ in 0..1_500 {
            let extra: Vec<String> = (0..rng.random_range(0..3usize))
                .map(|i| format!("attr{i}"))
                .collect();
            let n = rng.random_range(0..8usize);
            let mut want: Vec<Entry> = (0..n)
                .map(|i| Entry {
                    aor: format!("sip:u{i}@example.com"),
                    display_name: value(&mut rng),
                    department: value(&mut rng),
                    title: value(&mut rng),
                    phone: value(&mut rng),
                    attributes: extra.iter().map(|a| (a.clone(), value(&mut rng))).collect(),
                })
                .collect();
            let eol = if rng.random_bool(0.5) { "\r\n" } else { "\n" };
            let mut text = if rng.random_bool(0.2) {
                "\u{feff}".to_string()
            } else {
                String::new()
            };
            let mut header: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
            header.extend(extra.iter().cloned());
            text += &header
                .iter()
                .map(|h| write_field(&mut rng, h))
                .collect::<Vec<_>>()
                .join(",");
            text += eol;
            for e in &want {
                if rng.random_bool(0.1) {
                    text += &format!("# {}{eol}", value(&mut rng).replace(['\n', '\r'], " "));
                }
                if rng.random_bool(0.1) {
                    text += eol;
                }
                let aor = if rng.random_bool(0.5) {
                    e.aor.clone()
                } else {
                    e.aor.trim_start_matches("sip:").to_string()
                };
                let mut fields = vec![aor, e.display_name.clone()];
                fields.extend([e.department.clone(), e.title.clone(), e.phone.clone()]);
                fields.extend(e.attributes.iter().map(|(_, v)| v.clone()));
                text += &fields
                    .iter()
                    .map(|f| write_field(&mut rng, f))
                    .collect::<Vec<_>>()
                    .join(",");
                text += eol;
            }
            let d = Directory::parse(&text).unwrap_or_else(|e| panic!("{e:?}\n{text:?}"));
            want.sort_by_key(|e| (e.display_name.to_lowercase(), e.aor.clone()));
            assert_eq!(d.entries(), want.as_slice(), "{text:?}");
            for e in &want {
                assert_eq!(d.get(&e.aor), Some(e));
            }
            let q = value(&mut rng);
            assert!(d.search(&q).iter().all(|&i| i < d.len()));
            // Whatever the AoR column holds.
            let odd = mutate(&mut rng, "sip:u@example.com");
            if let Some(aor) = parse_aor(&odd) {
                assert!(
                    aor.starts_with("sip:") && aor.contains('@'),
                    "{odd:?} {aor}"
                );
            }

            for input in [mutate(&mut rng, &text), {
                let len = rng.random_range(0..120usize);
                (0..len).map(|_| rng.random::<char>()).collect()
            }] {
                match Directory::parse(&input) {
                    Ok(d) => {
                        accepted += 1;
                        let q = mutate(&mut rng, "");
                        assert!(d.search(&q).iter().all(|&i| i < d.len()));
                    }
                    Err(errors) => {
                        assert!(!errors.is_empty());
                        assert!(errors.len() <= MAX_ERRORS + 1);
                        assert!(errors.iter().all(|e| e.line >= 1));
                    }
                }
            }
        }
        assert!(accepted > 100, "only {accepted} mutated inputs accepted");
    }
}
