//! Derived labels: a label computed from other columns of the row, written in the schema as
//! `expr = "click and purchase"`, `expr = "income == \">50K\""` or `expr = "views * rate"`.
//!
//! Grammar, loosest first: `or`; `and`; `not`; comparisons `== != < <= > >=` (one per
//! operand pair); `+ -`; `* /`; then a number, a `"text"` literal, a column name (a letter or
//! `_`, then letters, digits, `_` or `.`; any other name in backticks: `` `marital-status` ``)
//! or a parenthesised expression. A cell that reads as a finite number is that number, else text:
//! `==`/`!=` compare numbers as numbers and anything else as text; the other operators need
//! numbers. `and`, `or`, `not` and comparisons give 1 or 0 (any non-zero number is true).
//! An empty cell in a column the expression reads is a missing value (the row's error).

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A number literal.
    Number(f64),
    /// A text literal.
    Text(String),
    /// A column's cell.
    Column(String),
    /// `not e`.
    Not(Box<Expr>),
    /// A binary operation.
    Binary(Op, Box<Expr>, Box<Expr>),
}

/// The binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `or`
    Or,
    /// `and`
    And,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
}

/// A value while evaluating: a cell's text, and its number when it reads as one.
#[derive(Debug, Clone, PartialEq)]
struct Value {
    number: Option<f64>,
    text: String,
}

impl Value {
    fn of_number(x: f64) -> Self {
        Self {
            number: Some(x),
            text: x.to_string(),
        }
    }

    fn of_text(text: &str) -> Self {
        let t = text.trim();
        Self {
            number: t.parse::<f64>().ok().filter(|x| x.is_finite()),
            text: t.to_string(),
        }
    }

    fn number(&self, op: &str) -> Result<f64, String> {
        self.number
            .ok_or_else(|| format!("`{}` is not a number (`{op}` needs numbers)", self.text))
    }
}

/// A token of the expression text.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Number(f64),
    Text(String),
    Name(String),
    Symbol(&'static str),
}

/// Splits `src` into tokens; an error names the position (1-based character).
fn tokens(src: &str) -> Result<Vec<Token>, String> {
    const SYMBOLS: [&str; 12] = ["==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "(", ")"];
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let rest: String = chars[i..].iter().take(2).collect();
        if c.is_whitespace() {
            i += 1;
        } else if let Some(sym) = SYMBOLS.iter().find(|s| rest.starts_with(**s)) {
            out.push(Token::Symbol(sym));
            i += sym.len();
        } else if c == '"' || c == '`' {
            let end = chars[i + 1..]
                .iter()
                .position(|&d| d == c)
                .ok_or_else(|| format!("an unclosed {c} at character {}", i + 1))?;
            let inner: String = chars[i + 1..i + 1 + end].iter().collect();
            out.push(if c == '"' {
                Token::Text(inner)
            } else {
                Token::Name(inner)
            });
            i += end + 2;
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let len = chars[i..]
                .iter()
                .take_while(|d| d.is_ascii_alphanumeric() || **d == '.')
                .count();
            let text: String = chars[i..i + len].iter().collect();
            let x = text
                .parse::<f64>()
                .map_err(|_| format!("`{text}` at character {} is not a number", i + 1))?;
            out.push(Token::Number(x));
            i += len;
        } else if c.is_alphabetic() || c == '_' {
            let len = chars[i..]
                .iter()
                .take_while(|d| d.is_alphanumeric() || matches!(d, '_' | '.'))
                .count();
            out.push(Token::Name(chars[i..i + len].iter().collect()));
            i += len;
        } else {
            return Err(format!("unexpected `{c}` at character {}", i + 1));
        }
    }
    Ok(out)
}

/// A recursive-descent parser over the tokens.
struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Name(n)) if n == word)
    }

    fn peek_symbol(&self, options: &[&'static str]) -> Option<&'static str> {
        match self.tokens.get(self.at) {
            Some(Token::Symbol(s)) if options.contains(s) => Some(s),
            _ => None,
        }
    }

    /// `left (word right)*` for a keyword operator.
    fn words(
        &mut self,
        word: &str,
        op: Op,
        next: fn(&mut Self) -> Result<Expr, String>,
    ) -> Result<Expr, String> {
        let mut left = next(self)?;
        while self.peek_word(word) {
            self.at += 1;
            left = Expr::Binary(op, Box::new(left), Box::new(next(self)?));
        }
        Ok(left)
    }

    fn or(&mut self) -> Result<Expr, String> {
        self.words("or", Op::Or, Self::and)
    }

    fn and(&mut self) -> Result<Expr, String> {
        self.words("and", Op::And, Self::not)
    }

    fn not(&mut self) -> Result<Expr, String> {
        if self.peek_word("not") {
            self.at += 1;
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, String> {
        let left = self.sum()?;
        let ops = [
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("<", Op::Lt),
            (">", Op::Gt),
        ];
        let symbols: Vec<&'static str> = ops.iter().map(|(s, _)| *s).collect();
        let Some(sym) = self.peek_symbol(&symbols) else {
            return Ok(left);
        };
        self.at += 1;
        let op = ops
            .iter()
            .find(|(s, _)| *s == sym)
            .map(|(_, o)| *o)
            .expect("listed");
        Ok(Expr::Binary(op, Box::new(left), Box::new(self.sum()?)))
    }

    /// `left (symbol right)*` for arithmetic operators.
    fn arithmetic(
        &mut self,
        ops: [(&'static str, Op); 2],
        next: fn(&mut Self) -> Result<Expr, String>,
    ) -> Result<Expr, String> {
        let mut left = next(self)?;
        while let Some(sym) = self.peek_symbol(&[ops[0].0, ops[1].0]) {
            self.at += 1;
            let op = if sym == ops[0].0 { ops[0].1 } else { ops[1].1 };
            left = Expr::Binary(op, Box::new(left), Box::new(next(self)?));
        }
        Ok(left)
    }

    fn sum(&mut self) -> Result<Expr, String> {
        self.arithmetic([("+", Op::Add), ("-", Op::Sub)], Self::product)
    }

    fn product(&mut self) -> Result<Expr, String> {
        self.arithmetic([("*", Op::Mul), ("/", Op::Div)], Self::atom)
    }

    fn atom(&mut self) -> Result<Expr, String> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        match token {
            Some(Token::Number(x)) => Ok(Expr::Number(x)),
            Some(Token::Text(t)) => Ok(Expr::Text(t)),
            Some(Token::Name(n)) if !matches!(n.as_str(), "and" | "or" | "not") => Ok(Expr::Column(n)),
            Some(Token::Symbol("-")) => Ok(Expr::Binary(
                Op::Sub,
                Box::new(Expr::Number(0.0)),
                Box::new(self.atom()?),
            )),
            Some(Token::Symbol("(")) => {
                let inner = self.or()?;
                match self.tokens.get(self.at) {
                    Some(Token::Symbol(")")) => {
                        self.at += 1;
                        Ok(inner)
                    }
                    _ => Err("a `(` without its `)`".into()),
                }
            }
            Some(other) => Err(format!("unexpected {}", shown(&other))),
            None => Err("the expression ends too soon".into()),
        }
    }
}

fn shown(token: &Token) -> String {
    match token {
        Token::Number(x) => format!("number {x}"),
        Token::Text(t) => format!("text \"{t}\""),
        Token::Name(n) => format!("`{n}`"),
        Token::Symbol(s) => format!("`{s}`"),
    }
}

impl Expr {
    /// Parses `src`; the error says what is wrong and where.
    pub fn parse(src: &str) -> Result<Self, String> {
        let mut parser = Parser {
            tokens: tokens(src)?,
            at: 0,
        };
        let expr = parser.or()?;
        match parser.tokens.get(parser.at) {
            None => Ok(expr),
            Some(t) => Err(format!("unexpected {} after a whole expression", shown(t))),
        }
    }

    /// The columns the expression reads, each once, in order of first use.
    pub fn columns(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        self.visit(&mut |e| {
            if let Expr::Column(c) = e
                && !out.contains(&c.as_str())
            {
                out.push(c);
            }
        });
        out
    }

    fn visit<'a>(&'a self, f: &mut impl FnMut(&'a Expr)) {
        f(self);
        match self {
            Expr::Not(e) => e.visit(f),
            Expr::Binary(_, a, b) => {
                a.visit(f);
                b.visit(f);
            }
            _ => {}
        }
    }

    /// The expression's number for a row whose cells `cell(column)` gives; an error says
    /// which column or operator failed.
    pub fn eval<'c>(&self, cell: &impl Fn(&str) -> Option<&'c str>) -> Result<f64, String> {
        self.value(cell)?.number("the label")
    }

    fn value<'c>(&self, cell: &impl Fn(&str) -> Option<&'c str>) -> Result<Value, String> {
        let truth = |b: bool| Value::of_number(if b { 1.0 } else { 0.0 });
        Ok(match self {
            Expr::Number(x) => Value::of_number(*x),
            Expr::Text(t) => Value {
                number: None,
                text: t.clone(),
            },
            Expr::Column(c) => match cell(c).map(str::trim) {
                Some(t) if !t.is_empty() => Value::of_text(t),
                _ => return Err(format!("column `{c}` is empty")),
            },
            Expr::Not(e) => truth(e.value(cell)?.number("not")? == 0.0),
            Expr::Binary(op, a, b) => {
                let (a, b) = (a.value(cell)?, b.value(cell)?);
                let nums = |s: &str| Ok::<_, String>((a.number(s)?, b.number(s)?));
                match op {
                    Op::Or => truth(nums("or").map(|(x, y)| x != 0.0 || y != 0.0)?),
                    Op::And => truth(nums("and").map(|(x, y)| x != 0.0 && y != 0.0)?),
                    Op::Eq | Op::Ne => {
                        let same = match (a.number, b.number) {
                            (Some(x), Some(y)) => x == y,
                            _ => a.text == b.text,
                        };
                        truth(same == (*op == Op::Eq))
                    }
                    Op::Lt => truth(nums("<").map(|(x, y)| x < y)?),
                    Op::Le => truth(nums("<=").map(|(x, y)| x <= y)?),
                    Op::Gt => truth(nums(">").map(|(x, y)| x > y)?),
                    Op::Ge => truth(nums(">=").map(|(x, y)| x >= y)?),
                    Op::Add => Value::of_number(nums("+").map(|(x, y)| x + y)?),
                    Op::Sub => Value::of_number(nums("-").map(|(x, y)| x - y)?),
                    Op::Mul => Value::of_number(nums("*").map(|(x, y)| x * y)?),
                    Op::Div => {
                        let (x, y) = nums("/")?;
                        if y == 0.0 {
                            return Err(format!("division by zero ({x} / 0)"));
                        }
                        Value::of_number(x / y)
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(cells: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |c| cells.iter().find(|(n, _)| *n == c).map(|(_, v)| *v)
    }

    #[test]
    fn expressions_evaluate_as_written_by_hand() {
        let cells = [
            ("click", "1"),
            ("purchase", "0"),
            ("income", ">50K"),
            ("marital", " Married-civ-spouse "),
            ("views", "4"),
            ("rate", "0.25"),
            ("odd name", "7"),
            ("gap", ""),
        ];
        let r = row(&cells);
        for (src, want) in [
            ("click and purchase", 0.0),
            ("click or purchase", 1.0),
            ("not purchase", 1.0),
            ("not not click", 1.0),
            ("income == \">50K\"", 1.0),
            ("income != \">50K\"", 0.0),
            ("marital == \"Married-civ-spouse\" and income == \">50K\"", 1.0),
            ("views * rate", 1.0),
            ("views * rate + 1 / 4", 1.25),
            ("(views - 1) * 2", 6.0),
            ("-views + 5", 1.0),
            ("views >= 4 and rate < .5", 1.0),
            ("views > 4 or `odd name` == 7", 1.0),
            ("views == 4.0", 1.0),
            ("click and purchase or views", 1.0),
        ] {
            let expr = Expr::parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
            assert_eq!(expr.eval(&r), Ok(want), "{src}");
        }
        // `and` binds tighter than `or`; comparisons tighter than both
        assert_eq!(
            Expr::parse("a or b and c").unwrap(),
            Expr::Binary(
                Op::Or,
                Box::new(Expr::Column("a".into())),
                Box::new(Expr::Binary(
                    Op::And,
                    Box::new(Expr::Column("b".into())),
                    Box::new(Expr::Column("c".into()))
                ))
            )
        );
        assert_eq!(
            Expr::parse("x > 1 and views * rate == 1").unwrap().columns(),
            ["x", "views", "rate"]
        );
        for (src, error) in [
            ("click and gap", "column `gap` is empty"),
            ("income > 5", "`>50K` is not a number (`>` needs numbers)"),
            ("views / (click - 1)", "division by zero"),
            ("income", "`>50K` is not a number"),
        ] {
            let got = Expr::parse(src).unwrap().eval(&r).unwrap_err();
            assert!(got.contains(error), "{src}: {got}");
        }
        for (src, error) in [
            ("click and", "ends too soon"),
            ("(click", "without its `)`"),
            ("click purchase", "unexpected `purchase` after a whole expression"),
            ("income == \">50K", "unclosed \" at character 11"),
            ("click & purchase", "unexpected `&` at character 7"),
            ("1.2.3", "`1.2.3` at character 1 is not a number"),
        ] {
            let got = Expr::parse(src).unwrap_err();
            assert!(got.contains(error), "{src}: {got}");
        }
    }
}
