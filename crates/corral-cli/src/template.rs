//! The command template and GNU parallel's replacement strings: `{}` `{.}`
//! `{/}` `{//}` `{/.}` `{#}` `{%}`, positional `{n}` and `{n.}` `{n/}`
//! `{n//}` `{n/.}`.

/// Stands for the job slot until the worker that runs the job (which owns a
/// slot) replaces it.
pub(crate) const SLOT_MARK: &str = "\u{1}%\u{1}";

/// What a replacement string stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Whole,
    NoExt,
    Base,
    Dir,
    BaseNoExt,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Lit(String),
    /// An input (`None`: all of them, space-separated) seen through `Kind`.
    Arg(Option<usize>, Kind),
    Seq,
    Slot,
}

/// A parsed command template.
#[derive(Clone, Debug)]
pub(crate) struct Template {
    words: Vec<Vec<Piece>>,
    /// Run through `sh -c` (the command was one string with shell syntax,
    /// or `--shell`).
    shell: bool,
    /// No replacement string: the inputs are appended.
    append: bool,
}

/// A job's command, expanded.
#[derive(Clone, Debug)]
pub(crate) struct Expanded {
    pub(crate) argv: Vec<String>,
    /// The command line as the joblog and `--dry-run` show it.
    pub(crate) line: String,
}

impl Template {
    /// Parses the command words. One word with shell syntax (`'gzip {} && rm
    /// {}'`) means a shell command, as in GNU parallel.
    pub(crate) fn parse(words: &[String], force_shell: bool) -> Result<Template, String> {
        if words.is_empty() {
            return Err(
                "no command given: `corral run [OPTIONS] COMMAND [ARGS…] ::: INPUTS…`".into(),
            );
        }
        let shell = force_shell || (words.len() == 1 && has_shell_syntax(&words[0]));
        let words: Vec<Vec<Piece>> = if shell {
            vec![parse_word(&words.join(" "))]
        } else {
            words.iter().map(|w| parse_word(w)).collect()
        };
        let append = !words.iter().flatten().any(|p| !matches!(p, Piece::Lit(_)));
        Ok(Template {
            words,
            shell,
            append,
        })
    }

    /// The command for one job. Without a `slot`, `{%}` becomes
    /// [`SLOT_MARK`], which the worker replaces with its own slot.
    pub(crate) fn expand(&self, args: &[String], seq: u64, slot: Option<u32>) -> Expanded {
        let quote = |s: &str| {
            if self.shell {
                shell_quote(s)
            } else {
                s.to_owned()
            }
        };
        let mut words: Vec<String> = self
            .words
            .iter()
            .map(|w| {
                w.iter()
                    .map(|p| piece(p, args, seq, slot, &quote))
                    .collect()
            })
            .collect();
        if self.append {
            if self.shell {
                for a in args {
                    words[0].push(' ');
                    words[0].push_str(&shell_quote(a));
                }
            } else {
                words.extend(args.iter().cloned());
            }
        }
        if self.shell {
            let line = words.remove(0);
            Expanded {
                argv: vec!["/bin/sh".into(), "-c".into(), line.clone()],
                line,
            }
        } else {
            let line = words
                .iter()
                .map(|w| shell_quote(w))
                .collect::<Vec<_>>()
                .join(" ");
            Expanded { argv: words, line }
        }
    }
}

fn piece(
    p: &Piece,
    args: &[String],
    seq: u64,
    slot: Option<u32>,
    quote: &dyn Fn(&str) -> String,
) -> String {
    match p {
        Piece::Lit(s) => s.clone(),
        Piece::Seq => seq.to_string(),
        Piece::Slot => slot.map_or_else(|| SLOT_MARK.to_owned(), |s| s.to_string()),
        Piece::Arg(None, kind) => args
            .iter()
            .map(|a| quote(&transform(a, *kind)))
            .collect::<Vec<_>>()
            .join(" "),
        Piece::Arg(Some(n), kind) => args
            .get(n - 1)
            .map(|a| quote(&transform(a, *kind)))
            .unwrap_or_default(),
    }
}

fn transform(arg: &str, kind: Kind) -> String {
    let (dir, base) = match arg.rfind('/') {
        Some(i) => (&arg[..i], &arg[i + 1..]),
        None => ("", arg),
    };
    let strip_ext = |s: &str| match s.rfind('.') {
        Some(i) if i > 0 => s[..i].to_owned(),
        _ => s.to_owned(),
    };
    match kind {
        Kind::Whole => arg.to_owned(),
        Kind::Base => base.to_owned(),
        Kind::BaseNoExt => strip_ext(base),
        Kind::Dir => match arg.rfind('/') {
            Some(0) => "/".to_owned(),
            Some(_) => dir.to_owned(),
            None => ".".to_owned(),
        },
        Kind::NoExt => {
            let cut = strip_ext(base);
            if arg.len() == base.len() {
                cut
            } else {
                format!("{dir}/{cut}")
            }
        }
    }
}

/// Splits a word into literal text and replacement strings.
fn parse_word(word: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut rest = word;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let repl = after
            .find('}')
            .and_then(|close| replacement(&after[..close]).map(|p| (p, close)));
        match repl {
            Some((p, close)) => {
                lit.push_str(&rest[..open]);
                if !lit.is_empty() {
                    pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                }
                pieces.push(p);
                rest = &after[close + 1..];
            }
            None => {
                lit.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    pieces
}

/// The piece a `{…}` body names, if it is a replacement string.
fn replacement(body: &str) -> Option<Piece> {
    match body {
        "#" => return Some(Piece::Seq),
        "%" => return Some(Piece::Slot),
        _ => {}
    }
    let digits = body.bytes().take_while(u8::is_ascii_digit).count();
    let (num, suffix) = body.split_at(digits);
    let n = if num.is_empty() {
        None
    } else {
        Some(num.parse::<usize>().ok().filter(|&n| n > 0)?)
    };
    let kind = match suffix {
        "" => Kind::Whole,
        "." => Kind::NoExt,
        "/" => Kind::Base,
        "//" => Kind::Dir,
        "/." => Kind::BaseNoExt,
        _ => return None,
    };
    Some(Piece::Arg(n, kind))
}

/// Whether a one-word command needs a shell (GNU parallel's habit of
/// quoting a whole pipeline).
fn has_shell_syntax(word: &str) -> bool {
    word.contains(|c: char| c.is_whitespace() || ";&|<>()$`*?[]~\"'\\!".contains(c))
}

/// Quotes `s` for `sh` (unchanged if it needs no quoting).
pub(crate) fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_./:=@%+,-\u{1}".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cmd: &[&str], args: &[&str]) -> Vec<String> {
        let words: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Template::parse(&words, false)
            .unwrap()
            .expand(&args, 7, Some(2))
            .argv
    }

    #[test]
    fn gnu_replacement_strings() {
        let a = ["dir/sub/file.tar.gz"];
        assert_eq!(run(&["echo", "{}"], &a), ["echo", "dir/sub/file.tar.gz"]);
        assert_eq!(run(&["echo", "{.}"], &a), ["echo", "dir/sub/file.tar"]);
        assert_eq!(run(&["echo", "{/}"], &a), ["echo", "file.tar.gz"]);
        assert_eq!(run(&["echo", "{//}"], &a), ["echo", "dir/sub"]);
        assert_eq!(run(&["echo", "{/.}"], &a), ["echo", "file.tar"]);
        assert_eq!(run(&["echo", "{#}-{%}"], &a), ["echo", "7-2"]);
        assert_eq!(run(&["echo", "{//}"], &["file"]), ["echo", "."]);
        assert_eq!(run(&["echo", "{2}{1.}"], &["a.x", "b"]), ["echo", "ba"]);
        assert_eq!(run(&["echo", "{2/.}"], &["a", "/x/y.z"]), ["echo", "y"]);
        assert_eq!(run(&["echo", "{}"], &["a", "b"]), ["echo", "a b"]);
        assert_eq!(
            run(&["awk", "{print}", "x{y"], &["f"]),
            ["awk", "{print}", "x{y", "f"]
        );
    }

    #[test]
    fn appends_inputs_and_keeps_words_whole() {
        assert_eq!(run(&["echo"], &["a b", "c"]), ["echo", "a b", "c"]);
        assert_eq!(
            run(&["sh", "-c", "exit {}"], &["1"]),
            ["sh", "-c", "exit 1"]
        );
    }

    #[test]
    fn one_string_with_shell_syntax_runs_in_a_shell() {
        let t = Template::parse(&["gzip {} && rm {}".to_string()], false).unwrap();
        let e = t.expand(&["my file".to_string()], 1, Some(1));
        assert_eq!(e.argv, ["/bin/sh", "-c", "gzip 'my file' && rm 'my file'"]);
        assert_eq!(e.line, "gzip 'my file' && rm 'my file'");
        let t = Template::parse(&["echo".to_string()], true).unwrap();
        assert_eq!(
            t.expand(&["a'b".to_string()], 1, Some(1)).line,
            r"echo 'a'\''b'"
        );
        let t = Template::parse(&["echo {%}".to_string()], false).unwrap();
        assert_eq!(t.expand(&[], 1, None).line, format!("echo {SLOT_MARK}"));
    }
}
