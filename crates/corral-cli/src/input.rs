//! Where the jobs' arguments come from: GNU parallel's `:::` lists, `::::`
//! files, `:::+`/`::::+` linked sources, standard input; records split by a
//! separator and, with `--colsep`, into columns.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader};

/// One input source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// `::: a b c`
    Values(Vec<String>),
    /// `:::: FILE` (`-` is standard input).
    File(String),
}

/// A source and whether it is linked (`:::+`) to the one before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Input {
    pub(crate) source: Source,
    pub(crate) linked: bool,
}

/// Splits the words after the options into the command and its sources.
pub(crate) fn split_command(words: Vec<OsString>) -> Result<(Vec<String>, Vec<Input>), String> {
    let words: Vec<String> = words
        .into_iter()
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    let mut command = Vec::new();
    let mut inputs: Vec<Input> = Vec::new();
    let mut current: Option<(&str, bool)> = None;
    for word in words {
        let marker = match word.as_str() {
            ":::" => Some((":::", false)),
            ":::+" => Some((":::", true)),
            "::::" => Some(("::::", false)),
            "::::+" => Some(("::::", true)),
            _ => None,
        };
        if let Some((kind, linked)) = marker {
            if linked && inputs.is_empty() {
                return Err(format!(
                    "`{word}` links to a source before it, and there is none"
                ));
            }
            current = Some((kind, linked));
            if kind == ":::" {
                inputs.push(Input {
                    source: Source::Values(Vec::new()),
                    linked,
                });
            }
            continue;
        }
        match current {
            None => command.push(word),
            Some((":::", _)) => {
                if let Some(Input {
                    source: Source::Values(v),
                    ..
                }) = inputs.last_mut()
                {
                    v.push(word);
                }
            }
            Some((_, linked)) => {
                inputs.push(Input {
                    source: Source::File(word),
                    linked,
                });
                current = Some(("::::", false));
            }
        }
    }
    Ok((command, inputs))
}

/// How records and columns are split.
#[derive(Clone, Debug)]
pub(crate) struct Split {
    pub(crate) record: u8,
    pub(crate) colsep: Option<String>,
}

/// Reads the records of a file (or standard input for `-`).
fn open(path: &str) -> Result<Box<dyn BufRead + Send>, String> {
    if path == "-" {
        return Ok(Box::new(BufReader::new(io::stdin())));
    }
    let file = File::open(path).map_err(|e| format!("cannot read input file `{path}`: {e}"))?;
    Ok(Box::new(BufReader::new(file)))
}

/// The records of a reader, lazily.
pub(crate) struct Records {
    reader: Box<dyn BufRead + Send>,
    sep: u8,
}

impl Iterator for Records {
    type Item = io::Result<String>;
    fn next(&mut self) -> Option<io::Result<String>> {
        let mut buf = Vec::new();
        match self.reader.read_until(self.sep, &mut buf) {
            Ok(0) => None,
            Ok(_) => {
                if buf.last() == Some(&self.sep) {
                    buf.pop();
                }
                Some(Ok(String::from_utf8_lossy(&buf).into_owned()))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// The argument lists of the jobs, in order.
pub(crate) struct Jobs {
    state: State,
    split: Split,
}

enum State {
    /// One lazy source: a file or standard input.
    Stream(Records),
    /// Everything read already (several sources combine).
    Ready(VecDeque<Vec<String>>),
}

impl Jobs {
    /// The jobs of `inputs` (standard input when there are none).
    pub(crate) fn new(inputs: &[Input], split: Split) -> Result<Jobs, String> {
        if inputs.is_empty() {
            return Ok(Jobs::stream(open("-")?, split));
        }
        if let [
            Input {
                source: Source::File(path),
                ..
            },
        ] = inputs
        {
            return Ok(Jobs::stream(open(path)?, split));
        }
        let groups = group(inputs, &split)?;
        Ok(Jobs {
            state: State::Ready(product(&groups).into()),
            split,
        })
    }

    fn stream(reader: Box<dyn BufRead + Send>, split: Split) -> Jobs {
        let sep = split.record;
        Jobs {
            state: State::Stream(Records { reader, sep }),
            split,
        }
    }

    /// How many jobs there are, if known without reading further.
    pub(crate) fn known_len(&self) -> Option<usize> {
        match &self.state {
            State::Ready(q) => Some(q.len()),
            State::Stream(_) => None,
        }
    }

    fn columns(&self, record: String) -> Vec<String> {
        match &self.split.colsep {
            Some(sep) if !sep.is_empty() => record.split(sep.as_str()).map(str::to_owned).collect(),
            _ => vec![record],
        }
    }
}

impl Iterator for Jobs {
    type Item = Result<Vec<String>, String>;
    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.state {
            State::Ready(q) => q.pop_front().map(Ok),
            State::Stream(records) => match records.next()? {
                Ok(record) => Some(Ok(self.columns(record))),
                Err(e) => Some(Err(format!("cannot read input: {e}"))),
            },
        }
    }
}

/// Reads every source and zips linked ones: one list of rows per group.
fn group(inputs: &[Input], split: &Split) -> Result<Vec<Vec<Vec<String>>>, String> {
    let mut groups: Vec<Vec<Vec<String>>> = Vec::new();
    for input in inputs {
        let rows: Vec<Vec<String>> = match &input.source {
            Source::Values(v) => v.iter().map(|s| vec![s.clone()]).collect(),
            Source::File(path) => {
                let records = Records {
                    reader: open(path)?,
                    sep: split.record,
                };
                let mut rows = Vec::new();
                for r in records {
                    let r = r.map_err(|e| format!("cannot read `{path}`: {e}"))?;
                    rows.push(match &split.colsep {
                        Some(sep) if !sep.is_empty() => {
                            r.split(sep.as_str()).map(str::to_owned).collect()
                        }
                        _ => vec![r],
                    });
                }
                rows
            }
        };
        match groups.last_mut() {
            Some(last) if input.linked => {
                // GNU parallel's --link: the shorter source wraps around.
                let len = last.len().max(rows.len());
                if rows.is_empty() || last.is_empty() {
                    last.clear();
                    continue;
                }
                *last = (0..len)
                    .map(|i| {
                        let mut row = last[i % last.len()].clone();
                        row.extend(rows[i % rows.len()].iter().cloned());
                        row
                    })
                    .collect();
            }
            _ => groups.push(rows),
        }
    }
    Ok(groups)
}

/// Every combination of one row per group, the last group varying fastest.
fn product(groups: &[Vec<Vec<String>>]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = vec![Vec::new()];
    for rows in groups {
        let mut next = Vec::with_capacity(out.len() * rows.len());
        for prefix in &out {
            for row in rows {
                let mut combined = prefix.clone();
                combined.extend(row.iter().cloned());
                next.push(combined);
            }
        }
        out = next;
    }
    if groups.is_empty() { Vec::new() } else { out }
}

/// Parses a record delimiter given with `-d` (`\n`, `\t`, `\0`, `\\` or one byte).
pub(crate) fn delimiter(text: &str) -> Result<u8, String> {
    let bytes = unescape(text);
    match bytes.as_slice() {
        [b] => Ok(*b),
        _ => Err(format!(
            "`-d {text}`: the delimiter must be one byte (or \\n, \\t, \\0)"
        )),
    }
}

/// Turns `\t`, `\n`, `\0` and `\\` into the bytes they name.
pub(crate) fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'0') => out.push(0),
            Some(other) => out.push(other),
            None => out.push(b'\\'),
        }
    }
    out
}

/// Whether reading standard input makes sense (it is not a terminal).
pub(crate) fn stdin_is_terminal() -> bool {
    use std::io::IsTerminal;
    io::stdin().is_terminal()
}
