"""One test web: a loopback HTTP/1.1 server core with pluggable routes.

* :mod:`tests.web.core`: :class:`~tests.web.core.Web` (serves routes over loopback or
  through an ``httpx.MockTransport``, logs requests), raw connection handlers;
* :mod:`tests.web.routes`: route sets (link graph, robots.txt, hostile routes, pages by
  URL, static files) and the sites tests crawl (``SiteServer``, ``MockSite``);
* :mod:`tests.web.faults`: a link graph answering with injected faults (the soak test);
* ``python -m tests.web``: the site in a subprocess.

A site is a :class:`~tests.web.core.Web` of route sets, served either way::

    web = Web(LinkGraph(pages=50), Robots("User-agent: *\\n"), latency=0.05)
    async with web.serving(ports=2):        # http://127.0.0.1:<port>, one origin per port
        ...                                 # crawl web.url(0, "/"), web.url(1, "/")
    assert web.max_concurrency(0) <= 2      # from the server's log

    site = MockSite({"http://a.test/": html("home", ["/x"])})
    crawler.open_crawl(config, transport=site.transport())  # in process, same handlers
"""
