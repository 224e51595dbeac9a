//! Addresses: the gazetteer of a region (street, house number, optional
//! building name, point) and the ranked answer to "where is this address".
//!
//! **Normalisation.** Every name and every query goes through one fold, so a
//! dispatcher may type what the caller said in either script: lower case,
//! Cyrillic (Russian and Kazakh letters) transliterated to Latin, Latin
//! diacritics dropped, a few spelling variants merged (`kh`/`h`, `ts`/`c`,
//! `ya`/`ia`, `yu`/`iu`, `iy`/`ii`/`i`), so `ё`/`е`, `Абая`/`Abaya`,
//! `Хан`/`Khan`/`Han` are the same word. Street-type words (`ул.`, `улица`,
//! `street`, `st`, `пр.`, `проспект`, `avenue`, `пер.`, …) and house words
//! (`д.`, `дом`, `house`, `№`) are not part of a street's name: a type in the
//! query is a hint that ranks a street of that type first, never a filter.
//!
//! **Houses.** `12`, `12а` (a letter suffix, Cyrillic or Latin), `12/1`, and
//! ranges `12-14` (one building spanning several numbers of one side of the
//! street: 12, 14, not 13). A query for `13` finds no `12-14`; a query for
//! `12` finds `12`, then `12-14`, then `12а`.
//!
//! **Ranking** (best first): how well the words matched (exact word, then a
//! word's prefix, then one typo), how well the house matched (exact, inside a
//! range, same number with a suffix, a prefix of the number typed so far),
//! the street type hint, then the shorter street name, then the house number.
//!
//! Owns: the address list, its normalised index and the query. Must never:
//! read files (the hub hands the text in), or panic on any input.

use std::collections::HashMap;

use crate::model::Location;

/// One address of the gazetteer file.
#[derive(Debug, Clone, PartialEq)]
pub struct Address {
    /// Street name as written in the file (e.g. `ул. Абая`).
    pub street: String,
    /// House number as written (`12`, `12а`, `12-14`, `12/1`); may be empty
    /// for a named building without one.
    pub house: String,
    /// Building name (`ТРЦ Атриум`), if any.
    pub building: Option<String>,
    /// Where it is.
    pub location: Location,
}

impl Address {
    /// `street, house` (and `(building)`), for display.
    pub fn label(&self) -> String {
        let mut s = self.street.clone();
        if !self.house.is_empty() {
            s.push_str(", ");
            s.push_str(&self.house);
        }
        if let Some(b) = &self.building {
            s.push_str(" (");
            s.push_str(b);
            s.push(')');
        }
        s
    }
}

/// A gazetteer that could not be built: the line (1-based, header counted)
/// or feature and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {problem}")]
pub struct GazetteerError {
    /// `line 7`, `feature 3`, `header`.
    pub at: String,
    /// What is wrong.
    pub problem: String,
}

fn err(at: impl Into<String>, problem: impl Into<String>) -> GazetteerError {
    GazetteerError {
        at: at.into(),
        problem: problem.into(),
    }
}

/// One ranked answer of [`Gazetteer::lookup`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Match<'a> {
    /// The address.
    pub address: &'a Address,
    /// Higher is better; only the order is meaningful.
    pub score: u32,
}

/// The kind of a street, from its type word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum StreetKind {
    Street,
    Avenue,
    Lane,
    Boulevard,
    Square,
    Embankment,
    Highway,
    Passage,
    Microdistrict,
}

/// A token that is a type word (a hint), a house word (dropped) or neither.
enum Role {
    Kind(StreetKind),
    HouseWord,
}

/// Type words after [`fold`] (so Cyrillic abbreviations appear transliterated:
/// `ул` → `ul`, `пр-т` → `pr-t`, `көшесі` → `koshesi`).
fn role(token: &str) -> Option<Role> {
    use StreetKind::*;
    let kind = match token {
        "ul" | "ulica" | "ulitsa" | "street" | "st" | "str" | "koshesi" | "kosh" => Street,
        "pr" | "pr-t" | "pr-kt" | "prosp" | "prospekt" | "prospect" | "avenue" | "ave" | "av" | "dangyly"
        | "dang" => Avenue,
        "per" | "pereulok" | "lane" | "ln" | "tupik" => Lane,
        "b-r" | "bul" | "bulvar" | "boulevard" | "blvd" => Boulevard,
        "pl" | "ploshad" | "ploshchad" | "square" | "sq" | "alany" => Square,
        "nab" | "naberezhnaia" | "naberezhnaya" | "embankment" | "emb" => Embankment,
        "sh" | "shosse" | "highway" | "hwy" => Highway,
        "proezd" | "pr-d" | "passage" | "drive" | "dr" => Passage,
        "mkr" | "mkrn" | "mikroraion" | "mikrorayon" | "microdistrict" => Microdistrict,
        "d" | "dom" | "house" | "no" | "nr" | "#" | "zd" | "zdanie" | "building" | "bldg" => {
            return Some(Role::HouseWord);
        }
        _ => return None,
    };
    Some(Role::Kind(kind))
}

/// Latin for one lower-case Cyrillic (Russian, Kazakh) or accented Latin
/// letter; `None` keeps the character.
fn translit(c: char) -> Option<&'static str> {
    Some(match c {
        'а' | 'ә' => "a",
        'б' => "b",
        'в' => "v",
        'г' | 'ғ' => "g",
        'д' => "d",
        'е' | 'ё' | 'э' => "e",
        'ж' => "zh",
        'з' => "z",
        'и' | 'і' => "i",
        'й' => "y",
        'к' | 'қ' => "k",
        'л' => "l",
        'м' => "m",
        'н' | 'ң' => "n",
        'о' | 'ө' => "o",
        'п' => "p",
        'р' => "r",
        'с' => "s",
        'т' => "t",
        'у' | 'ұ' | 'ү' => "u",
        'ф' => "f",
        'х' | 'һ' => "h",
        'ц' => "c",
        'ч' => "ch",
        'ш' => "sh",
        'щ' => "sh",
        'ъ' | 'ь' => "",
        'ы' => "y",
        'ю' => "iu",
        'я' => "ia",
        // Latin with diacritics (Kazakh Latin, Turkish, European spellings).
        'ä' | 'á' | 'à' | 'â' => "a",
        'é' | 'è' | 'ê' | 'ë' => "e",
        'í' | 'ì' | 'ı' | 'î' | 'ï' => "i",
        'ó' | 'ò' | 'ö' | 'ô' => "o",
        'ú' | 'ù' | 'ü' | 'û' | 'ū' => "u",
        'ý' | 'ÿ' => "y",
        'ş' | 'š' => "sh",
        'ç' | 'č' => "ch",
        'ž' => "zh",
        'ğ' | 'ǵ' => "g",
        'ñ' | 'ń' => "n",
        'q' => "k",
        'w' => "v",
        'x' => "ks",
        'j' => "y",
        _ => return None,
    })
}

/// The fold every name and query goes through (see the module doc): one
/// lower-case Latin spelling per word. Keeps `-`, `/` and `#` inside a token;
/// every other non-alphanumeric character separates tokens.
pub fn fold(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let flush = |cur: &mut String, out: &mut Vec<String>| {
        let t = merge_variants(cur.trim_matches(|c| c == '-' || c == '/'));
        // `12-14`, `44/1` and `пр-т` stay whole; `Жангир-хана` is two words.
        if t.starts_with(|c: char| c.is_ascii_digit()) || role(&t).is_some() {
            out.push(t);
        } else {
            out.extend(t.split(['-', '/']).filter(|w| !w.is_empty()).map(str::to_owned));
        }
        cur.clear();
    };
    for c in text.chars().flat_map(char::to_lowercase) {
        if let Some(l) = translit(c) {
            cur.push_str(l);
        } else if c.is_alphanumeric() || c == '-' || c == '/' {
            cur.push(c);
        } else if c == '#' || c == '№' {
            flush(&mut cur, &mut out);
            out.push("#".into());
        } else {
            flush(&mut cur, &mut out);
        }
    }
    flush(&mut cur, &mut out);
    out
}

/// Merges the Latin spellings of one Cyrillic sound.
fn merge_variants(t: &str) -> String {
    const PAIRS: [(&str, &str); 10] = [
        ("shch", "sh"),
        ("kh", "h"),
        ("ts", "c"),
        ("ya", "ia"),
        ("yu", "iu"),
        ("yo", "e"),
        ("iy", "i"),
        ("ii", "i"),
        ("yi", "i"),
        ("ck", "k"),
    ];
    let mut s = t.to_owned();
    for (from, to) in PAIRS {
        if s.contains(from) {
            s = s.replace(from, to);
        }
    }
    s
}

/// A house number: `lo..=hi` (equal unless a range) and what follows the
/// number (`a`, `/1`), folded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct House {
    lo: u32,
    hi: u32,
    suffix: String,
    text: String,
}

impl House {
    /// `None` when `text` does not start with a digit.
    fn parse(text: &str) -> Option<House> {
        let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
        let n = digits(text);
        if n == 0 {
            return None;
        }
        let lo: u32 = text[..n].parse().ok()?;
        let rest = &text[n..];
        if let Some(r) = rest.strip_prefix('-') {
            let m = digits(r);
            if m > 0 && m == r.len() {
                let hi: u32 = r.parse().ok()?;
                if hi >= lo {
                    return Some(House {
                        lo,
                        hi,
                        suffix: String::new(),
                        text: text.into(),
                    });
                }
            }
        }
        Some(House {
            lo,
            hi: lo,
            suffix: rest.trim_start_matches('-').into(),
            text: text.into(),
        })
    }

    /// How well this (an address's house) answers `q` (the query's), if at all.
    fn score(&self, q: &House) -> Option<u32> {
        if self.text == q.text || (self.lo, self.hi, &self.suffix) == (q.lo, q.hi, &q.suffix) {
            return Some(100);
        }
        let plain = q.suffix.is_empty() && q.lo == q.hi;
        if plain && self.hi > self.lo && (self.lo..=self.hi).contains(&q.lo) && q.lo % 2 == self.lo % 2 {
            return Some(80);
        }
        if q.hi > q.lo && self.lo == self.hi && (q.lo..=q.hi).contains(&self.lo) && self.lo % 2 == q.lo % 2 {
            return Some(70);
        }
        if plain && self.lo == q.lo && self.hi == q.hi {
            return Some(60);
        }
        // Typed so far: `1` on the way to `12`.
        if plain && self.text.starts_with(&q.text) {
            return Some(20);
        }
        None
    }
}

/// A distinct street (by folded name and kind) and its addresses.
#[derive(Debug)]
struct Street {
    kind: Option<StreetKind>,
    /// Its folded name words (a candidate is checked against them).
    words: Vec<String>,
    /// The total length of its folded name words (the ranking's tie-break).
    name_len: usize,
    /// Indexes into `Gazetteer::addresses`, sorted by house number.
    addresses: Vec<u32>,
}

/// Where a word points: a street, or a building (an address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Target {
    Street(u32),
    Building(u32),
}

/// The region's addresses and their index. Immutable once built; cheap to
/// share behind an `Arc`.
#[derive(Debug, Default)]
pub struct Gazetteer {
    addresses: Vec<Address>,
    houses: Vec<Option<House>>,
    streets: Vec<Street>,
    /// Every (folded word, target), sorted: exact and prefix lookups are a
    /// binary search.
    words: Vec<(String, Target)>,
    /// One typo: every distinct word of 3+ letters under itself and under each
    /// spelling with one letter left out, as the index in `words` of its first
    /// entry. Two words within one edit share a key (symmetric deletion), so a
    /// typo is a handful of hash lookups, not a scan of the words.
    deletions: HashMap<String, Vec<u32>>,
    /// Folded building names' words, by address (empty: no building).
    building_words: Vec<Vec<String>>,
    /// Their total length, by address (the ranking's tie-break).
    building_len: Vec<usize>,
}

/// Above this many proposals a query dedups them in a table by target.
const DENSE_FROM: usize = 256;

/// The most matches [`Gazetteer::lookup`] returns.
pub const MAX_LIMIT: usize = 50;

/// How well one query word matched one indexed word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum WordMatch {
    Typo = 1,
    Prefix = 2,
    Exact = 3,
}

impl Gazetteer {
    /// Builds the index. Every address needs a non-empty street name (with at
    /// least one word that is not a type word) and a valid location.
    pub fn new(addresses: Vec<Address>) -> Result<Gazetteer, GazetteerError> {
        let mut g = Gazetteer::default();
        let mut by_name: HashMap<(Vec<String>, Option<StreetKind>), u32> = HashMap::new();
        for (i, a) in addresses.iter().enumerate() {
            let at = || format!("address {} ({})", i + 1, a.label());
            a.location.validate().map_err(|e| err(at(), e.to_string()))?;
            let (words, kind) = name_words(&a.street);
            if words.is_empty() {
                return Err(err(at(), "the street has no name"));
            }
            let i = u32::try_from(i).map_err(|_| err(at(), "too many addresses"))?;
            let next = g.streets.len() as u32;
            let s = *by_name.entry((words.clone(), kind)).or_insert(next);
            if s == next {
                for w in &words {
                    g.words.push((w.clone(), Target::Street(s)));
                }
                g.streets.push(Street {
                    kind,
                    name_len: words.iter().map(String::len).sum(),
                    words,
                    addresses: Vec::new(),
                });
            }
            g.streets[s as usize].addresses.push(i);
            if let Some(b) = &a.building {
                let (bw, _) = name_words(b);
                for w in &bw {
                    g.words.push((w.clone(), Target::Building(i)));
                }
                g.building_words.resize(i as usize, Vec::new());
                g.building_len.resize(i as usize, 0);
                g.building_len.push(bw.iter().map(String::len).sum());
                g.building_words.push(bw);
            }
            let house = fold(&a.house).concat();
            g.houses.push(House::parse(&house));
        }
        g.addresses = addresses;
        for s in &mut g.streets {
            let houses = &g.houses;
            s.addresses.sort_by_key(|&a| {
                houses[a as usize]
                    .as_ref()
                    .map_or((u32::MAX, String::new()), |h| (h.lo, h.suffix.clone()))
            });
        }
        g.words.sort();
        g.words.dedup();
        let mut first = 0;
        while first < g.words.len() {
            let w = &g.words[first].0;
            if w.chars().count() >= 3 {
                for key in deletions(w) {
                    g.deletions.entry(key).or_default().push(first as u32);
                }
            }
            first += g.words[first..].partition_point(|(x, _)| x == w);
        }
        Ok(g)
    }

    /// Parses CSV text (a header row naming the columns `street`, `house`,
    /// `building` (optional), `lat`, `lon`, in any order; RFC 4180 quoting).
    pub fn from_csv(text: &str) -> Result<Gazetteer, GazetteerError> {
        let mut rows = csv_rows(text);
        let (_, header) = rows.next().ok_or_else(|| err("header", "the file is empty"))?;
        let header = header.map_err(|e| err("header", e))?;
        let col = |name: &str| header.iter().position(|h| h.trim().eq_ignore_ascii_case(name));
        let need = |name: &str| col(name).ok_or_else(|| err("header", format!("no `{name}` column")));
        let (street, house, lat, lon) = (need("street")?, need("house")?, need("lat")?, need("lon")?);
        let building = col("building");
        let mut out = Vec::new();
        for (line, row) in rows {
            let at = format!("line {line}");
            let row = row.map_err(|e| err(&at, e))?;
            if row.iter().all(|f| f.trim().is_empty()) {
                continue;
            }
            let field = |i: usize| row.get(i).map(|f| f.trim()).unwrap_or_default();
            let num = |i: usize, name: &str| {
                field(i)
                    .parse::<f64>()
                    .map_err(|_| err(&at, format!("{name} {:?} is not a number", field(i))))
            };
            let location =
                Location::new(num(lat, "lat")?, num(lon, "lon")?).map_err(|e| err(&at, e.to_string()))?;
            out.push(Address {
                street: field(street).into(),
                house: field(house).into(),
                building: building.map(field).filter(|b| !b.is_empty()).map(Into::into),
                location,
            });
        }
        Gazetteer::new(out)
    }

    /// How many addresses it holds.
    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }

    /// The best `limit` (at most [`MAX_LIMIT`]) matches for `query`, best
    /// first. Every name word of the query must match (a prefix counts, so
    /// this serves autocomplete); a house number in the query must match
    /// too. Empty when nothing does.
    pub fn lookup(&self, query: &str, limit: usize) -> Vec<Match<'_>> {
        let limit = limit.min(MAX_LIMIT);
        let Some(q) = Query::parse(query) else {
            return Vec::new();
        };
        if limit == 0 {
            return Vec::new();
        }
        let hits = self.hits(&q.words);
        let mut out: Vec<(u32, usize, u32, u32)> = Vec::new();
        for (target, word_score) in hits {
            match target {
                Target::Street(s) => {
                    let street = &self.streets[s as usize];
                    let kind_bonus = match (q.kind, street.kind) {
                        (Some(a), Some(b)) if a == b => 5,
                        _ => 0,
                    };
                    // A shorter name: a closer match for the same words.
                    let spare = street.name_len;
                    let base = word_score * 1000 + kind_bonus;
                    let mut taken = 0;
                    for &a in &street.addresses {
                        let Some(h) = self.house_score(a, q.house.as_ref()) else {
                            continue;
                        };
                        out.push((base + h, spare, self.house_key(a), a));
                        taken += 1;
                        // Without a house the street's first houses stand for it.
                        if q.house.is_none() && taken >= limit {
                            break;
                        }
                    }
                }
                Target::Building(a) => {
                    let Some(h) = self.house_score(a, q.house.as_ref()) else {
                        continue;
                    };
                    let spare = self.building_len.get(a as usize).copied().unwrap_or_default();
                    out.push((word_score * 1000 + h, spare, self.house_key(a), a));
                }
            }
        }
        let order = |x: &(u32, usize, u32, u32), y: &(u32, usize, u32, u32)| {
            y.0.cmp(&x.0)
                .then(x.1.cmp(&y.1))
                .then(x.2.cmp(&y.2))
                .then(x.3.cmp(&y.3))
        };
        // An address is proposed at most twice (by its street and by its
        // building), so the best `2 * limit` entries hold the best `limit`
        // addresses: only those are sorted.
        if out.len() > 2 * limit {
            out.select_nth_unstable_by(2 * limit, order);
            out.truncate(2 * limit);
        }
        out.sort_unstable_by(order);
        out.dedup_by_key(|x| x.3);
        out.truncate(limit);
        out.into_iter()
            .map(|(score, _, _, a)| Match {
                address: &self.addresses[a as usize],
                score,
            })
            .collect()
    }

    fn house_key(&self, a: u32) -> u32 {
        self.houses[a as usize].as_ref().map_or(u32::MAX, |h| h.lo)
    }

    fn house_score(&self, a: u32, q: Option<&House>) -> Option<u32> {
        match (q, &self.houses[a as usize]) {
            (None, _) => Some(0),
            (Some(q), Some(h)) => h.score(q),
            (Some(_), None) => None,
        }
    }

    /// Every target all of `words` match, with the sum of their match
    /// qualities. The word with the fewest targets proposes them; the others
    /// are checked against each proposed target's own words.
    fn hits(&self, words: &[String]) -> Vec<(Target, u32)> {
        let plans: Vec<WordPlan> = words.iter().map(|w| self.plan(w)).collect();
        let Some(lead) = (0..plans.len()).min_by_key(|&i| plans[i].size()) else {
            return Vec::new();
        };
        // One entry per target, its best quality. A first keystroke proposes
        // thousands: a table by target then beats sorting them.
        let proposals = self.proposals(&words[lead], &plans[lead]);
        let mut hits: Vec<(Target, u32)> = Vec::new();
        if plans[lead].size() > DENSE_FROM {
            let streets = self.streets.len();
            let slot = |t: Target| match t {
                Target::Street(s) => s as usize,
                Target::Building(a) => streets + a as usize,
            };
            let mut best = vec![0u8; streets + self.addresses.len()];
            for (t, m) in proposals {
                let b = &mut best[slot(t)];
                if *b == 0 {
                    hits.push((t, 0));
                }
                *b = (*b).max(m as u8);
            }
            for (t, score) in &mut hits {
                *score = u32::from(best[slot(*t)]);
            }
        } else {
            hits.extend(proposals.map(|(t, m)| (t, m as u32)));
            hits.sort_unstable_by(|x, y| x.0.cmp(&y.0).then(y.1.cmp(&x.1)));
            hits.dedup_by_key(|x| x.0);
        }
        hits.retain_mut(|(t, score)| {
            for (i, w) in words.iter().enumerate() {
                if i == lead {
                    continue;
                }
                match self.word_match(*t, w, plans[i].typo()) {
                    Some(m) => *score += m as u32,
                    None => return false,
                }
            }
            true
        });
        hits
    }

    /// Where one query word's matches are: the `words` entries it is a prefix
    /// of, or (none, and 4+ letters) the entries within one typo.
    fn plan(&self, w: &str) -> WordPlan {
        let start = self.words.partition_point(|(x, _)| x.as_str() < w);
        let len = self.words[start..].partition_point(|(x, _)| x.starts_with(w));
        if len > 0 || w.chars().count() < 4 {
            return WordPlan::Prefix(start..start + len);
        }
        let mut firsts: Vec<u32> = deletions(w)
            .iter()
            .filter_map(|k| self.deletions.get(k))
            .flatten()
            .copied()
            .filter(|&f| within_one_edit(w, &self.words[f as usize].0))
            .collect();
        firsts.sort_unstable();
        firsts.dedup();
        let ranges = firsts
            .into_iter()
            .map(|f| {
                let f = f as usize;
                let x = &self.words[f].0;
                f..f + self.words[f..].partition_point(|(y, _)| y == x)
            })
            .collect();
        WordPlan::Typo(ranges)
    }

    /// The targets a word's plan reaches, each with how well it matched.
    fn proposals<'s>(
        &'s self,
        w: &'s str,
        plan: &'s WordPlan,
    ) -> impl Iterator<Item = (Target, WordMatch)> + 's {
        let (ranges, typo) = match plan {
            WordPlan::Prefix(r) => (std::slice::from_ref(r), false),
            WordPlan::Typo(rs) => (rs.as_slice(), true),
        };
        ranges.iter().flat_map(move |r| {
            self.words[r.clone()].iter().map(move |(x, t)| {
                let m = if typo {
                    WordMatch::Typo
                } else if x == w {
                    WordMatch::Exact
                } else {
                    WordMatch::Prefix
                };
                (*t, m)
            })
        })
    }

    /// How well `w` matches one of a target's own words, if at all (a typo
    /// counts only when `typo`: the word matched nothing better anywhere).
    fn word_match(&self, t: Target, w: &str, typo: bool) -> Option<WordMatch> {
        let words = match t {
            Target::Street(s) => &self.streets[s as usize].words,
            Target::Building(a) => self.building_words.get(a as usize)?,
        };
        words
            .iter()
            .filter_map(|x| {
                if x == w {
                    Some(WordMatch::Exact)
                } else if x.starts_with(w) {
                    Some(WordMatch::Prefix)
                } else if typo && within_one_edit(w, x) {
                    Some(WordMatch::Typo)
                } else {
                    None
                }
            })
            .max()
    }
}

/// Where a query word's matches lie in `Gazetteer::words`.
#[derive(Debug)]
enum WordPlan {
    /// The entries the word is a prefix of (exact matches first).
    Prefix(std::ops::Range<usize>),
    /// No entry starts with it: the entries of the words one typo away.
    Typo(Vec<std::ops::Range<usize>>),
}

impl WordPlan {
    /// How many (word, target) entries it reaches.
    fn size(&self) -> usize {
        match self {
            WordPlan::Prefix(r) => r.len(),
            WordPlan::Typo(rs) => rs.iter().map(ExactSizeIterator::len).sum(),
        }
    }

    /// True when only typos matched.
    fn typo(&self) -> bool {
        matches!(self, WordPlan::Typo(_))
    }
}

/// A word and every spelling of it with one letter left out: the keys of the
/// one-typo index.
fn deletions(w: &str) -> Vec<String> {
    let mut out = vec![w.to_string()];
    for (i, c) in w.char_indices() {
        let mut d = String::with_capacity(w.len());
        d.push_str(&w[..i]);
        d.push_str(&w[i + c.len_utf8()..]);
        out.push(d);
    }
    out
}

/// A street or building name's folded words (type and house words out) and
/// the kind its type word named.
fn name_words(name: &str) -> (Vec<String>, Option<StreetKind>) {
    let mut kind = None;
    let mut words = Vec::new();
    for t in fold(name) {
        match role(&t) {
            Some(Role::Kind(k)) => kind = kind.or(Some(k)),
            Some(Role::HouseWord) => {}
            None => words.push(t),
        }
    }
    (words, kind)
}

/// A parsed query: name words, the street-type hint, the house.
#[derive(Debug)]
struct Query {
    words: Vec<String>,
    kind: Option<StreetKind>,
    house: Option<House>,
}

impl Query {
    /// `None` when it has no name word to look for.
    fn parse(text: &str) -> Option<Query> {
        let tokens = fold(text);
        let mut q = Query {
            words: Vec::new(),
            kind: None,
            house: None,
        };
        let mut numbers: Vec<String> = Vec::new();
        let mut i = 0;
        while i < tokens.len() {
            let t = &tokens[i];
            if t.starts_with(|c: char| c.is_ascii_digit()) {
                // `12 а`: a lone letter after a number is its suffix.
                let mut n = t.clone();
                if let Some(next) = tokens.get(i + 1)
                    && next.chars().count() == 1
                    && next.chars().all(char::is_alphabetic)
                {
                    n.push_str(next);
                    i += 1;
                }
                numbers.push(n);
            } else {
                match role(t) {
                    Some(Role::Kind(k)) => q.kind = q.kind.or(Some(k)),
                    Some(Role::HouseWord) => {}
                    None => q.words.push(t.clone()),
                }
            }
            i += 1;
        }
        // The last number is the house; a number before it (`8 Марта 12`)
        // is part of the name.
        if let Some(last) = numbers.pop() {
            if q.words.is_empty() && numbers.is_empty() {
                return None;
            }
            q.words.extend(numbers);
            if q.words.is_empty() {
                return None;
            }
            q.house = House::parse(&last);
        }
        (!q.words.is_empty()).then_some(q)
    }
}

/// Levenshtein distance at most 1 (one substitution, insertion or deletion).
fn within_one_edit(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let (short, long) = if a.len() <= b.len() { (&a, &b) } else { (&b, &a) };
    if long.len() - short.len() > 1 {
        return false;
    }
    let prefix = short.iter().zip(long.iter()).take_while(|(x, y)| x == y).count();
    if short.len() == long.len() {
        short[prefix + 1.min(short.len() - prefix)..] == long[prefix + 1.min(long.len() - prefix)..]
    } else {
        short[prefix..] == long[prefix + 1..]
    }
}

/// CSV records with their 1-based line numbers (RFC 4180: `"` quotes a
/// field, `""` is a quote inside one, a quoted field may hold newlines).
fn csv_rows(text: &str) -> impl Iterator<Item = (usize, Result<Vec<String>, String>)> + '_ {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut chars = text.chars().peekable();
    let mut line = 1;
    std::iter::from_fn(move || {
        chars.peek()?;
        let start = line;
        let mut row = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        loop {
            let Some(c) = chars.next() else {
                if quoted {
                    return Some((start, Err("a quoted field is not closed".into())));
                }
                break;
            };
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                (true, '"') => quoted = false,
                (false, '"') if field.trim().is_empty() => {
                    field.clear();
                    quoted = true;
                }
                (false, ',') => row.push(std::mem::take(&mut field)),
                (false, '\n') => {
                    line += 1;
                    break;
                }
                (false, '\r') => {}
                (_, c) => {
                    if c == '\n' {
                        line += 1;
                    }
                    field.push(c);
                }
            }
        }
        row.push(field);
        Some((start, Ok(row)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(street: &str, house: &str, building: Option<&str>, lat: f64) -> Address {
        Address {
            street: street.into(),
            house: house.into(),
            building: building.map(Into::into),
            location: Location { lat, lon: 51.37 },
        }
    }

    fn city() -> Gazetteer {
        Gazetteer::new(vec![
            a("ул. Абая", "12", None, 51.20),
            a("ул. Абая", "12-14", None, 51.201),
            a("ул. Абая", "12а", None, 51.202),
            a("ул. Абая", "7", None, 51.203),
            a("ул. Абая", "120", None, 51.204),
            a("проспект Абая", "12", None, 51.205),
            a("улица Жангир хана", "3", None, 51.21),
            a("ул. Чёрная речка", "5", None, 51.22),
            a("проспект Назарбаева", "44/1", Some("ТРЦ Атриум"), 51.23),
            a("Dostyk avenue", "9", None, 51.24),
            a("ул. Курмангазы", "101", None, 51.25),
            a("улица 8 Марта", "4", None, 51.26),
        ])
        .unwrap()
    }

    fn labels(g: &Gazetteer, q: &str) -> Vec<String> {
        g.lookup(q, 10).iter().map(|m| m.address.label()).collect()
    }

    fn first(g: &Gazetteer, q: &str) -> String {
        labels(g, q)
            .into_iter()
            .next()
            .unwrap_or_else(|| format!("nothing for {q:?}"))
    }

    #[test]
    fn cyrillic_and_latin_spellings_meet() {
        let g = city();
        for q in ["ул. Абая 7", "Abaya 7", "ABAYA st 7", "abaia 7", "абая, д. 7"] {
            assert_eq!(first(&g, q), "ул. Абая, 7", "{q}");
        }
        for q in [
            "Жангир хана 3",
            "Zhangir Khana 3",
            "zhangir han 3",
            "жангир-хана 3",
        ] {
            assert_eq!(first(&g, q), "улица Жангир хана, 3", "{q}");
        }
        for q in ["Kurmangazy 101", "Курмангазы 101", "kurmangazi 101"] {
            assert_eq!(first(&g, q), "ул. Курмангазы, 101", "{q}");
        }
        // A Latin name in the file, a Cyrillic query.
        assert_eq!(first(&g, "пр. Достык 9"), "Dostyk avenue, 9");
        // ё and е.
        assert_eq!(first(&g, "черная речка 5"), "ул. Чёрная речка, 5");
        assert_eq!(first(&g, "Chernaya rechka 5"), "ул. Чёрная речка, 5");
    }

    #[test]
    fn abbreviations_rank_the_named_street_type_first() {
        let g = city();
        for q in [
            "пр. Абая 12",
            "проспект Абая 12",
            "Abaya avenue 12",
            "Abaya ave 12",
            "пр-т Абая 12",
        ] {
            assert_eq!(first(&g, q), "проспект Абая, 12", "{q}");
        }
        for q in ["ул. Абая 12", "улица Абая 12", "Abaya street 12", "Abaya st. 12"] {
            assert_eq!(first(&g, q), "ул. Абая, 12", "{q}");
        }
        // Without a type both exact 12s come before the range and the suffix.
        let l = labels(&g, "Абая 12");
        assert_eq!(l.len(), 5, "{l:?}");
        assert!(
            l[..2].contains(&"ул. Абая, 12".to_string()) && l[..2].contains(&"проспект Абая, 12".to_string())
        );
        assert_eq!(&l[2..4], ["ул. Абая, 12-14", "ул. Абая, 12а"]);
        assert_eq!(l[4], "ул. Абая, 120", "a prefix of the number comes last");
    }

    #[test]
    fn house_number_ranges_and_suffixes() {
        let g = city();
        assert_eq!(first(&g, "Абая 14"), "ул. Абая, 12-14", "inside the range");
        assert_eq!(
            labels(&g, "ул. Абая 13"),
            Vec::<String>::new(),
            "13 is across the street"
        );
        assert_eq!(first(&g, "Абая 12-14"), "ул. Абая, 12-14");
        assert_eq!(first(&g, "ул. Абая 12а"), "ул. Абая, 12а");
        assert_eq!(
            first(&g, "ul. Abaya 12a"),
            "ул. Абая, 12а",
            "Latin a is Cyrillic а"
        );
        assert_eq!(first(&g, "Абая 12 а"), "ул. Абая, 12а");
        assert_eq!(
            first(&g, "Назарбаева 44/1"),
            "проспект Назарбаева, 44/1 (ТРЦ Атриум)"
        );
        // A query range finds the single numbers inside it.
        let l = labels(&g, "ул Абая 10-12");
        assert!(l.contains(&"ул. Абая, 12".to_string()), "{l:?}");
        assert_eq!(labels(&g, "Абая 99"), Vec::<String>::new());
    }

    #[test]
    fn ranking_exact_words_before_prefixes_before_typos() {
        let g = Gazetteer::new(vec![
            a("ул. Мира", "1", None, 51.1),
            a("ул. Мирная", "1", None, 51.2),
            a("ул. Миранда", "1", None, 51.3),
        ])
        .unwrap();
        assert_eq!(labels(&g, "мира 1"), ["ул. Мира, 1", "ул. Миранда, 1"]);
        assert_eq!(
            labels(&g, "мир 1"),
            ["ул. Мира, 1", "ул. Мирная, 1", "ул. Миранда, 1"]
        );
        // One typo still finds it, only when nothing matches better.
        assert_eq!(labels(&g, "мирнья 1"), ["ул. Мирная, 1"]);
        assert_eq!(labels(&g, "Mirnaya 1"), ["ул. Мирная, 1"]);
        assert!(g.lookup("мира 1", 10)[0].score > g.lookup("мир 1", 10)[0].score);
    }

    #[test]
    fn autocomplete_while_typing_and_limits() {
        let g = city();
        assert_eq!(
            first(&g, "аб"),
            "ул. Абая, 7",
            "a street prefix lists its houses in order"
        );
        assert_eq!(g.lookup("абая", 2).len(), 2);
        assert_eq!(g.lookup("абая", 0).len(), 0);
        assert_eq!(first(&g, "Абая 1"), "ул. Абая, 12", "a house prefix");
        assert_eq!(
            first(&g, "атриум"),
            "проспект Назарбаева, 44/1 (ТРЦ Атриум)",
            "a building name"
        );
        assert_eq!(
            first(&g, "8 марта 4"),
            "улица 8 Марта, 4",
            "a number inside a street name"
        );
        for q in ["", "   ", "12", "ул.", "!!!", "д. 5"] {
            assert!(g.lookup(q, 10).is_empty(), "{q:?}");
        }
        assert!(labels(&g, "Лермонтова 5").is_empty());
    }

    #[test]
    fn csv_loads_with_quotes_any_column_order_and_names_bad_lines() {
        let text = "\u{feff}lat,lon,street,house,building\n\
                    51.2,51.37,\"ул. Абая\",12,\n\
                    51.3,51.38,\"пр. \"\"Ак Жайык\"\"\",\"3-5\",\"ТЦ, центр\"\r\n\
                    \n";
        let g = Gazetteer::from_csv(text).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(first(&g, "ак жайык 5"), "пр. \"Ак Жайык\", 3-5 (ТЦ, центр)");
        let e = Gazetteer::from_csv("street,house,lat,lon\nАбая,1,91,0\n").unwrap_err();
        assert_eq!(e.at, "line 2");
        let e = Gazetteer::from_csv("street,house,lat\n").unwrap_err();
        assert!(e.problem.contains("`lon`"), "{e}");
        let e = Gazetteer::from_csv("street,house,lat,lon\nул.,1,51,51\n").unwrap_err();
        assert!(e.problem.contains("no name"), "{e}");
        let e = Gazetteer::from_csv("street,house,lat,lon\n\"Абая,1,51,51\n").unwrap_err();
        assert!(e.problem.contains("not closed"), "{e}");
    }

    /// What `hits` must find, by a scan of every (word, target): each query
    /// word's best match per target (exact, prefix, or — when no word anywhere
    /// starts with it and it has 4+ letters — one typo), summed over targets
    /// every word matched.
    fn hits_by_scan(g: &Gazetteer, words: &[String]) -> HashMap<Target, u32> {
        let mut all: Option<HashMap<Target, u32>> = None;
        for w in words {
            let prefixed = g.words.iter().any(|(x, _)| x.starts_with(w.as_str()));
            let typo = !prefixed && w.chars().count() >= 4;
            let mut found: HashMap<Target, u32> = HashMap::new();
            for (x, t) in &g.words {
                let m = if x == w {
                    WordMatch::Exact
                } else if x.starts_with(w.as_str()) {
                    WordMatch::Prefix
                } else if typo && within_one_edit(w, x) {
                    WordMatch::Typo
                } else {
                    continue;
                };
                let e = found.entry(*t).or_insert(0);
                *e = (*e).max(m as u32);
            }
            all = Some(match all {
                None => found,
                Some(prev) => prev
                    .into_iter()
                    .filter_map(|(t, s)| found.get(&t).map(|f| (t, s + f)))
                    .collect(),
            });
        }
        all.unwrap_or_default()
    }

    /// The index answers exactly what a scan of every word would, for queries
    /// of one to three words: whole words, prefixes, typos (a letter changed,
    /// dropped or added) and words that match nothing.
    #[test]
    fn the_index_finds_what_a_scan_finds() {
        let names = [
            "Абая",
            "Абаева",
            "Мира",
            "Мирная",
            "Сырым Датова",
            "Курмангазы",
            "Ихсанова",
            "Ескалиева",
            "Жангир хана",
            "Досмухамедова",
            "Чапаева",
            "Каблукова",
            "Мира Абая",
            "8 Марта",
        ];
        let buildings = ["ТЦ Сауле", "БЦ Мир", "ТРЦ Атриум", "Дом Мира"];
        let mut list = Vec::new();
        for (i, n) in names.iter().enumerate() {
            for h in 1..=3 {
                let b = buildings.get((i + h) % 7).filter(|_| h == 2).copied();
                list.push(a(n, &h.to_string(), b, 51.0 + i as f64 * 0.01));
            }
        }
        let g = Gazetteer::new(list).unwrap();
        let vocab: Vec<String> = g.words.iter().map(|(w, _)| w.clone()).collect();
        // Every word, each prefix of it, and each one-letter change of it.
        let mut singles: Vec<String> = Vec::new();
        for w in &vocab {
            let chars: Vec<char> = w.chars().collect();
            for end in 1..=chars.len() {
                singles.push(chars[..end].iter().collect());
            }
            for i in 0..chars.len() {
                let mut dropped = chars.clone();
                dropped.remove(i);
                singles.push(dropped.iter().collect());
                let mut changed = chars.clone();
                changed[i] = 'y';
                singles.push(changed.iter().collect());
                let mut added = chars.clone();
                added.insert(i, 'o');
                singles.push(added.iter().collect());
            }
        }
        singles.extend(["zzzz", "q", "mirx"].map(String::from));
        singles.sort();
        singles.dedup();
        let mut checked = 0;
        for (i, w) in singles.iter().enumerate() {
            let pair = [w.clone(), singles[(i * 7 + 3) % singles.len()].clone()];
            let triple = [
                w.clone(),
                vocab[i % vocab.len()].clone(),
                singles[(i * 13 + 1) % singles.len()].clone(),
            ];
            for q in [&pair[..1], &pair[..], &triple[..]] {
                let got: HashMap<Target, u32> = g.hits(q).into_iter().collect();
                assert_eq!(got.len(), g.hits(q).len(), "one entry per target: {q:?}");
                assert_eq!(got, hits_by_scan(&g, q), "{q:?}");
                checked += 1;
            }
        }
        assert!(checked > 1_000, "{checked}");

        // A first keystroke with hundreds of matches (the table path), some
        // targets matching it with two words.
        let wide = Gazetteer::new(
            (0..400)
                .map(|i| {
                    let b = format!("Бизнес центр Б{i}");
                    a(
                        &format!("ул. Бай{i}"),
                        "1",
                        (i % 3 == 0).then_some(b.as_str()),
                        51.0,
                    )
                })
                .collect(),
        )
        .unwrap();
        for q in [
            &["b".to_string()][..],
            &["bai1".into()],
            &["biznes".into(), "b".into()],
            &["bai".into(), "bai3".into()],
        ] {
            let plan = wide.plan(&q[0]);
            let got: HashMap<Target, u32> = wide.hits(q).into_iter().collect();
            assert_eq!(got.len(), wide.hits(q).len(), "one entry per target: {q:?}");
            assert_eq!(got, hits_by_scan(&wide, q), "{q:?}");
            if q[0] == "b" {
                assert!(plan.size() > DENSE_FROM, "the table path");
                assert!(got.len() > 500, "{}", got.len());
            }
        }
    }

    #[test]
    fn one_edit() {
        assert!(within_one_edit("mira", "mira"));
        assert!(within_one_edit("mira", "mire"));
        assert!(within_one_edit("mira", "miraa"));
        assert!(within_one_edit("mira", "mra"));
        assert!(!within_one_edit("mira", "mrea"));
        assert!(!within_one_edit("mira", "miraaa"));
        assert!(within_one_edit("", "a"));
    }
}
