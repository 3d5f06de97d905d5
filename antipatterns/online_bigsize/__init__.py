"""SA1 Online bigsize (antipattern): a heavy forest beside a light linear model, judged by the
loading test's SLO gate as well as by accuracy."""
