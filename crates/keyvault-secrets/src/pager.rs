//! [`Pager`]: a lazy, resumable stream over the items of a listing; [`Pages`]: the same listing page by page.
//!
//! The continuation token is the service's `nextLink` (opaque). Resume a listing with
//! [`Pager::by_page_from`] or [`Pager::resume_from`]; the client only ever sends it to its own vault.

use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::logging::redacted_url;
use futures_core::Stream;
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

pub(crate) type PageFuture<T> = Pin<Box<dyn Future<Output = Result<Page<T>>> + Send>>;
/// Fetches a page: the first (`None`), or the page a link names, with whether the link is the caller's (a
/// continuation token given to [`Pager::resume_from`]/[`Pager::by_page_from`]) or the service's `nextLink`.
pub(crate) type FetchPage<T> = Arc<dyn Fn(Option<NextPage>) -> PageFuture<T> + Send + Sync>;

/// A page to fetch by its link.
pub(crate) struct NextPage {
    pub link: String,
    /// From the caller (a continuation token), not from the service.
    pub from_caller: bool,
}

/// One page of a listing. Its `Debug` shows the continuation token (the next page's URL) with its query values
/// (such as `$skiptoken`) redacted, as the HTTP log does.
#[derive(Clone)]
#[non_exhaustive]
pub struct Page<T> {
    /// The items of this page (possibly fewer than the page size, possibly none).
    pub items: Vec<T>,
    /// The token of the next page; `None` on the last page.
    pub continuation_token: Option<String>,
}

impl<T: fmt::Debug> fmt::Debug for Page<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Page")
            .field("items", &self.items)
            .field(
                "continuation_token",
                &self.continuation_token.as_deref().map(redacted_url),
            )
            .finish()
    }
}

/// A stream of pages. Ends after the last page, or after the first error; after an error that fetching the
/// page again may mend (a connection lost, a timeout, 401, 408, 429, a 5xx), [`Pages::continuation_token`] is
/// the token of the page that failed, to resume from (as Python's pagers keep it), unless it was the first page
/// (start over). After any other error (a link or answer the client refuses, another 4xx, a paging loop) it is
/// `None`: resuming would fail again.
///
/// A `nextLink` this listing has already followed (a paging loop: a broken or hostile service) is not followed
/// again: the stream ends with an [`ErrorKind::Data`] error instead.
pub struct Pages<T> {
    fetch: FetchPage<T>,
    /// Items already fetched, given out as the first page (the rest of a page a [`Pager`] had begun). Boxed:
    /// `Pages` stays `Unpin` whatever the items are.
    buffered: Option<Box<Page<T>>>,
    /// `Some(token)`: a fetch is due (`None` token = the first page). `None`: finished.
    next: Option<Option<String>>,
    /// The token of the page whose fetch failed (the stream has ended).
    failed: Option<String>,
    /// The token in `next` is the caller's (a resumed listing's first fetch).
    next_from_caller: bool,
    in_flight: Option<PageFuture<T>>,
    /// The links followed in this listing, by a hash of their path and query (the client sends every link to
    /// its own vault, whatever its scheme and host): 8 bytes a page.
    followed: HashSet<u64>,
}

/// What identifies a link: the request it makes — its path (dot segments resolved, case and a trailing `/`
/// ignored, as Key Vault ignores them) and its query without `api-version` (replaced by the client's own) —
/// not its scheme, host or fragment, which are not sent. Links that differ only in those are one page.
fn link_key(link: &str) -> u64 {
    static BASE: std::sync::LazyLock<reqwest::Url> = std::sync::LazyLock::new(|| {
        reqwest::Url::parse("https://vault.invalid/").expect("a valid URL")
    });
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match reqwest::Url::parse(link).or_else(|_| BASE.join(link)) {
        Ok(url) => {
            let path = url.path();
            path.strip_suffix('/')
                .unwrap_or(path)
                .to_ascii_lowercase()
                .hash(&mut h);
            for part in url.query().unwrap_or("").split('&') {
                let name = part.split('=').next().unwrap_or("");
                if !part.is_empty()
                    && !name.eq_ignore_ascii_case("api-version")
                    && !name.eq_ignore_ascii_case("api%2dversion")
                {
                    part.hash(&mut h);
                }
            }
        }
        // Not a URL: refused when fetched; any key will do.
        Err(_) => link.hash(&mut h),
    }
    h.finish()
}

impl<T> fmt::Debug for Pages<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pages")
            .field(
                "continuation_token",
                &self.continuation_token().map(redacted_url),
            )
            .field("in_flight", &self.in_flight.is_some())
            .finish()
    }
}

impl<T> Pages<T> {
    /// The token of the next page to fetch (`None` before the first page and after the last); after an error,
    /// the token of the page that failed (resume from it with [`Pager::by_page_from`]).
    pub fn continuation_token(&self) -> Option<&str> {
        match &self.buffered {
            // The buffered items come first; the token after them is the page's own.
            Some(page) => page.continuation_token.as_deref(),
            None => (self.next.as_ref().and_then(|t| t.as_deref())).or(self.failed.as_deref()),
        }
    }
}

impl<T> Stream for Pages<T> {
    type Item = Result<Page<T>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(page) = this.buffered.take() {
            return Poll::Ready(Some(Ok(*page)));
        }
        if this.in_flight.is_none() {
            match this.next.take() {
                None => return Poll::Ready(None),
                Some(Some(token)) if !this.followed.insert(link_key(&token)) => {
                    return Poll::Ready(Some(Err(Error::new(
                        ErrorKind::Data,
                        format!(
                            "the service's nextLink {} names a page this listing has already read (a paging \
                             loop); the listing stops here",
                            redacted_url(&token)
                        ),
                    ))));
                }
                Some(token) => {
                    let from_caller = std::mem::take(&mut this.next_from_caller);
                    this.failed = token.clone();
                    this.in_flight = Some((this.fetch)(
                        token.map(|link| NextPage { link, from_caller }),
                    ))
                }
            }
        }
        let fut = this.in_flight.as_mut().expect("a fetch is in flight");
        let result = ready!(fut.as_mut().poll(cx));
        this.in_flight = None;
        match &result {
            Ok(page) => {
                this.failed = None;
                this.next = page.continuation_token.clone().map(Some);
            }
            Err(e) => {
                this.next = None;
                // `failed` keeps the page's token to resume from, unless fetching it again cannot help: a link
                // the client refuses, an answer it cannot read, or the service refusing the request itself.
                let status = e.status().map(|s| s.as_u16());
                let hopeless = matches!(e.kind(), ErrorKind::Data | ErrorKind::InvalidArgument)
                    || e.is_permanent()
                    || status
                        .is_some_and(|s| (400..500).contains(&s) && !matches!(s, 401 | 408 | 429));
                if hopeless {
                    this.failed = None;
                }
            }
        }
        Poll::Ready(Some(result))
    }
}

/// A listing as a lazy [`Stream`] of items (Python: `ItemPaged` / `AsyncItemPaged`).
///
/// Nothing is fetched until the stream is polled. Use [`futures_util::StreamExt`] (or
/// `futures::StreamExt`) to iterate: `while let Some(item) = pager.next().await { … }`.
pub struct Pager<T> {
    pages: Pages<T>,
    buffer: VecDeque<T>,
}

impl<T> fmt::Debug for Pager<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pager")
            .field("pages", &self.pages)
            .field("buffered", &self.buffer.len())
            .finish()
    }
}

impl<T> Pager<T> {
    pub(crate) fn new(fetch: FetchPage<T>) -> Self {
        Pager {
            pages: Pages {
                fetch,
                buffered: None,
                next: Some(None),
                failed: None,
                next_from_caller: false,
                in_flight: None,
                followed: HashSet::new(),
            },
            buffer: VecDeque::new(),
        }
    }

    /// The listing page by page, from where this pager is: the items of a partly read page not yet given out
    /// come first, as a page of their own. (Python's `by_page()` starts the listing over.)
    pub fn by_page(mut self) -> Pages<T> {
        if !self.buffer.is_empty() {
            self.pages.buffered = Some(Box::new(Page {
                items: self.buffer.into_iter().collect(),
                continuation_token: self.pages.continuation_token().map(str::to_string),
            }));
        }
        self.pages
    }

    /// Python's `by_page(continuation_token=…)`: the pages from the page `token` names (a token of this
    /// listing: see [`Pager::resume_from`]).
    pub fn by_page_from(self, continuation_token: impl Into<String>) -> Pages<T> {
        self.resume_from(continuation_token).pages
    }

    /// Restart this pager at the page `token` names (a token from [`Page::continuation_token`]).
    ///
    /// A token belongs to its listing: one whose path is not this listing's (`/secrets`,
    /// `/secrets/{name}/versions` of the same name, `/deletedsecrets`), such as another listing's token, a
    /// secret's id or text that is not a token at all, makes the first item an [`ErrorKind::InvalidArgument`]
    /// error, without any request. (The token's scheme and host are not used: every page is fetched from the
    /// client's own vault.)
    pub fn resume_from(mut self, continuation_token: impl Into<String>) -> Self {
        self.buffer.clear();
        self.pages.buffered = None;
        self.pages.failed = None;
        self.pages.in_flight = None;
        self.pages.followed.clear();
        self.pages.next = Some(Some(continuation_token.into()));
        self.pages.next_from_caller = true;
        self
    }

    /// The token of the next page to fetch: resuming from it skips the items still buffered. After an error,
    /// the token of the page that failed (see [`Pages`]).
    pub fn continuation_token(&self) -> Option<&str> {
        self.pages.continuation_token()
    }
}

impl<T: Unpin> Stream for Pager<T> {
    type Item = Result<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(item) = this.buffer.pop_front() {
                return Poll::Ready(Some(Ok(item)));
            }
            match ready!(Pin::new(&mut this.pages).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(page)) => this.buffer.extend(page.items),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn numbers(pages: usize, per_page: usize) -> Pager<usize> {
        Pager::new(Arc::new(move |token: Option<NextPage>| {
            Box::pin(async move {
                let page: usize = token.map(|t| t.link.parse().unwrap()).unwrap_or(0);
                let items = (page * per_page..(page + 1) * per_page).collect();
                let next = (page + 1 < pages).then(|| (page + 1).to_string());
                Ok(Page {
                    items,
                    continuation_token: next,
                })
            }) as PageFuture<usize>
        }))
    }

    async fn resumed(pager: Pager<usize>, token: String) -> Vec<usize> {
        pager.resume_from(token).map(|r| r.unwrap()).collect().await
    }

    #[tokio::test]
    async fn items_pages_and_resume() {
        let all: Vec<usize> = numbers(3, 2).map(|r| r.unwrap()).collect().await;
        assert_eq!(all, vec![0, 1, 2, 3, 4, 5]);
        let mut pages = numbers(3, 2).by_page();
        let first = pages.next().await.unwrap().unwrap();
        assert_eq!(first.items, vec![0, 1]);
        let token = first.continuation_token.unwrap();
        assert_eq!(pages.continuation_token(), Some(token.as_str()));
        assert_eq!(resumed(numbers(3, 2), token).await, vec![2, 3, 4, 5]);
        let mut empty = numbers(1, 0);
        assert!(empty.next().await.is_none());
    }

    /// A page that fails ends the stream, and its token stays the continuation token: the listing resumes from
    /// the page that failed, losing and repeating nothing (a67-1: the token was gone with the error).
    #[tokio::test]
    async fn a_failed_page_keeps_its_token_to_resume_from() {
        let failing = |fail_on: usize| -> Pager<usize> {
            let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            Pager::new(Arc::new(move |token: Option<NextPage>| {
                let call = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Box::pin(async move {
                    let page: usize = token.map(|t| t.link.parse().unwrap()).unwrap_or(0);
                    if call == fail_on {
                        return Err(Error::new(ErrorKind::Connection, "connection reset"));
                    }
                    Ok(Page {
                        items: vec![page * 2, page * 2 + 1],
                        continuation_token: (page + 1 < 3).then(|| (page + 1).to_string()),
                    })
                }) as PageFuture<usize>
            }))
        };
        // Items: 0, 1, then the second page fails.
        let mut pager = failing(1);
        assert_eq!(pager.next().await.unwrap().unwrap(), 0);
        assert_eq!(pager.next().await.unwrap().unwrap(), 1);
        assert_eq!(
            pager.next().await.unwrap().unwrap_err().kind(),
            ErrorKind::Connection
        );
        assert!(
            pager.next().await.is_none(),
            "the stream ends after an error"
        );
        let token = pager
            .continuation_token()
            .expect("the failed page's token")
            .to_string();
        assert_eq!(token, "1");
        assert_eq!(resumed(numbers(3, 2), token).await, vec![2, 3, 4, 5]);
        // Pages: the same.
        let mut pages = failing(2).by_page();
        pages.next().await.unwrap().unwrap();
        pages.next().await.unwrap().unwrap();
        assert!(pages.next().await.unwrap().is_err());
        assert_eq!(pages.continuation_token(), Some("2"));
        // A page the service refuses (400), or whose answer the client cannot read, has no token to resume
        // from: it would fail again.
        for refused in [
            || Error::from_response(http::StatusCode::BAD_REQUEST, None, None, None),
            || Error::new(ErrorKind::Data, "not a page"),
        ] {
            let fetch: FetchPage<usize> = Arc::new(move |token: Option<NextPage>| {
                Box::pin(async move {
                    match token {
                        None => Ok(Page {
                            items: vec![0usize],
                            continuation_token: Some("1".into()),
                        }),
                        Some(_) => Err(refused()),
                    }
                }) as PageFuture<usize>
            });
            let mut pages = Pager::new(fetch).by_page();
            pages.next().await.unwrap().unwrap();
            assert!(pages.next().await.unwrap().is_err());
            assert_eq!(pages.continuation_token(), None, "{:?}", refused());
        }
        // The first page failing leaves nothing to resume from but the start.
        let mut first = failing(0);
        assert!(first.next().await.unwrap().is_err());
        assert_eq!(first.continuation_token(), None);
    }

    /// `by_page()` on a pager part-way through a page gives the rest of that page first, then the next pages.
    #[tokio::test]
    async fn by_page_after_some_items_loses_none() {
        let mut pager = numbers(3, 3);
        assert_eq!(pager.next().await.unwrap().unwrap(), 0);
        let mut pages = pager.by_page();
        assert_eq!(pages.continuation_token(), Some("1"));
        let mut seen = Vec::new();
        while let Some(page) = pages.next().await {
            seen.extend(page.unwrap().items);
        }
        assert_eq!(seen, (1..9).collect::<Vec<_>>());
    }

    /// A next link already followed in this listing (here from page 2 back to page 1, on another host) ends
    /// the listing with a Data error after the items read so far, instead of going round forever.
    #[tokio::test]
    async fn a_paging_loop_ends_with_an_error() {
        let fetch: FetchPage<usize> = Arc::new(move |token: Option<NextPage>| {
            Box::pin(async move {
                let (items, next) = match token.as_ref().map(|t| t.link.as_str()) {
                    None => (vec![0usize], "https://v.example/secrets?$skiptoken=1"),
                    Some("https://v.example/secrets?$skiptoken=1") => {
                        (vec![1], "https://v.example/secrets?$skiptoken=2")
                    }
                    _ => (vec![2], "https://other.example:9/secrets?$skiptoken=1"),
                };
                Ok(Page {
                    items,
                    continuation_token: Some(next.to_string()),
                })
            }) as PageFuture<usize>
        });
        let results: Vec<Result<usize>> = Pager::new(fetch).collect().await;
        assert_eq!(
            results.len(),
            4,
            "three pages, then the error, then the end"
        );
        for (i, r) in results[..3].iter().enumerate() {
            assert_eq!(*r.as_ref().unwrap(), i);
        }
        let e = results[3].as_ref().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Data);
        assert!(e.message().contains("paging loop"), "{e}");
        assert!(!e.message().contains("skiptoken=1"), "redacted: {e}");
    }

    /// A page's and a listing's `Debug` show the next link with its `$skiptoken` redacted.
    #[tokio::test]
    async fn debug_redacts_the_skiptoken() {
        let next =
            "https://v.example/secrets?api-version=7.6&$skiptoken=CANARY-cursor&maxresults=2";
        let fetch: FetchPage<u8> = Arc::new(move |_| {
            Box::pin(async move {
                Ok(Page {
                    items: vec![1u8],
                    continuation_token: Some(next.to_string()),
                })
            }) as PageFuture<u8>
        });
        let mut pages = Pager::new(fetch).by_page();
        let page = pages.next().await.unwrap().unwrap();
        let shown = format!("{page:?} {pages:?}");
        assert!(!shown.contains("CANARY"), "{shown}");
        assert!(
            shown.contains("$skiptoken=REDACTED") && shown.contains("api-version=7.6"),
            "{shown}"
        );
    }
}
