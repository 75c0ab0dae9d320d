# smtpgate: the two commands.
#
#   make run    install what the build needs, build, and start a demo
#               server in the foreground (conf/smtpgate.conf)
#   make test   install what the tests need, build twice (objs/ and, with
#               sanitizers, objs-asan/), run the unit tests of both, the
#               integration suite against objs-asan/smtpgate, and a short
#               fuzzing pass when clang's libFuzzer is there
#
# The build itself is objs/Makefile, written by ./configure.  This file
# runs configure again whenever configure or auto/* is newer than the
# Makefile it wrote (with the options of the last run, kept in
# objs/reconfigure), so a fresh clone needs nothing but `make`.

SHELL   := /bin/sh
PYTHON  ?= /usr/bin/python3
# (A module directory's "module" file names the modules it defines.)
AUTO    := configure $(wildcard auto/*) $(wildcard modules/*/module)

ASAN_CONFIGURE := --builddir=objs-asan --with-sanitizers --with-debug
FUZZ_CONFIGURE := --builddir=objs-fuzz --with-cc=clang --with-fuzzer

FUZZ_HARNESSES := $(wildcard fuzz/fuzz_*.c)

MAKEFLAGS += --no-print-directory

.PHONY: default build asan deps test-deps run demo-cert test test-build \
        unit unit-asan install fuzz fuzz-smoke clean help bench

default: build


# --- configure and build ----------------------------------------------

objs/Makefile: $(AUTO)
	@if [ -f objs/reconfigure ]; then sh objs/reconfigure; \
	 else sh ./configure; fi

# The extra build directories configure quietly: under make -j they are
# configured side by side, and their output would interleave.
configure_quietly = @echo "configure $(1)"; \
    out=$$(sh ./configure $(1) 2>&1) || { printf '%s\n' "$$out" >&2; exit 1; }

objs-asan/Makefile: $(AUTO)
	$(call configure_quietly,$(ASAN_CONFIGURE))

objs-fuzz/Makefile: $(AUTO)
	$(call configure_quietly,$(FUZZ_CONFIGURE))

build: objs/Makefile
	@$(MAKE) -f objs/Makefile

asan: objs-asan/Makefile
	@$(MAKE) -f objs-asan/Makefile

unit: objs/Makefile
	@$(MAKE) -f objs/Makefile unit

unit-asan: objs-asan/Makefile
	@$(MAKE) -f objs-asan/Makefile unit

install: objs/Makefile
	@$(MAKE) -f objs/Makefile install

fuzz: objs-fuzz/Makefile
	@$(MAKE) -f objs-fuzz/Makefile fuzz

fuzz-smoke: objs-fuzz/Makefile
	@$(MAKE) -f objs-fuzz/Makefile fuzz-smoke


# --- dependencies -----------------------------------------------------

deps:
	@sh auto/deps build

test-deps:
	@sh auto/deps test


# --- make run ---------------------------------------------------------

# The demo server runs with objs/run/ as its prefix (logs/ inside it) and
# conf/smtpgate.conf as its configuration; objs/run/conf points back at
# conf/ so that prefix-relative and conf-relative paths both resolve.
run:
	@sh auto/deps build
	@$(MAKE) build
	@$(MAKE) demo-cert
	@mkdir -p objs/run/logs
	@[ -e objs/run/conf ] || ln -s ../../conf objs/run/conf
	exec objs/smtpgate -p $(CURDIR)/objs/run/ -c $(CURDIR)/conf/smtpgate.conf

# A self-signed ECDSA P-256 certificate for localhost; never checked in.
demo-cert:
	@if [ ! -s conf/demo/cert.pem ] || [ ! -s conf/demo/key.pem ]; then \
	    echo "creating the demo certificate conf/demo/cert.pem"; \
	    mkdir -p conf/demo && \
	    openssl req -x509 -newkey ec \
	        -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
	        -subj /CN=localhost \
	        -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
	        -keyout conf/demo/key.pem.tmp -out conf/demo/cert.pem.tmp \
	        2> conf/demo/openssl.log \
	    && chmod 600 conf/demo/key.pem.tmp \
	    && mv -f conf/demo/key.pem.tmp conf/demo/key.pem \
	    && mv -f conf/demo/cert.pem.tmp conf/demo/cert.pem \
	    && rm -f conf/demo/openssl.log \
	    || { cat conf/demo/openssl.log >&2; exit 1; }; \
	fi


# --- make test --------------------------------------------------------

# True when clang can link a libFuzzer harness (clang and libclang-rt-dev).
FUZZ_PROBE_C = int LLVMFuzzerTestOneInput(const char *p, unsigned long n) \
    { return p == 0 && n > 0; }
HAVE_FUZZER = d=$$(mktemp -d) \
    && echo '$(FUZZ_PROBE_C)' > $$d/f.c \
    && clang -fsanitize=fuzzer -o $$d/f $$d/f.c > /dev/null 2>&1; \
    r=$$?; rm -rf "$$d"; [ $$r -eq 0 ]

# pytest exits 5 when it collected nothing: that fails the run too.
test:
	@sh auto/deps test
	@if [ -z "$(FUZZ_HARNESSES)" ]; then fz=no; \
	 elif $(HAVE_FUZZER); then fz=yes; else fz=missing; fi; \
	 $(MAKE) test-build TEST_FUZZ=$$fz
	@$(MAKE) -f objs/Makefile unit
	@$(MAKE) -f objs-asan/Makefile unit
	@echo "pytest t/ with SMTPGATE_BIN=$(CURDIR)/objs-asan/smtpgate"
	@SMTPGATE_BIN=$(CURDIR)/objs-asan/smtpgate; export SMTPGATE_BIN; \
	 $(PYTHON) -m pytest t/ -q -ra; rc=$$?; \
	 if [ $$rc -eq 5 ]; then \
	     echo "make test: pytest collected no tests under t/" >&2; \
	 fi; \
	 exit $$rc
	@if [ -z "$(FUZZ_HARNESSES)" ]; then \
	     echo "fuzz-smoke: skipped, no fuzz/fuzz_*.c harnesses"; \
	 elif $(HAVE_FUZZER); then \
	     $(MAKE) -f objs-fuzz/Makefile fuzz-smoke; \
	 else \
	     echo "fuzz-smoke: skipped, clang cannot link -fsanitize=fuzzer" \
	          "(Debian packages clang, libclang-rt-dev)"; \
	 fi

# The builds make test needs, side by side under make -j.
test-build: build asan $(if $(filter yes,$(TEST_FUZZ)),fuzz)


# --- make bench -------------------------------------------------------

# Installs what the benchmark needs (Postfix's smtp-sink, nginx and its
# mail module), builds objs/smtpgate and bench/build/smtpload.  The
# measuring itself is bench/run (bench/README.md).
bench:
	@sh auto/deps bench
	@$(MAKE) build
	@$(MAKE) -C bench
	@echo "make bench: now run bench/run (or bench/run --quick)"


# --- clean, help ------------------------------------------------------

clean:
	rm -rf objs objs-asan objs-fuzz

help:
	@echo "make [build]     configure (when needed) and build objs/smtpgate"
	@echo "make run         build and run the demo server in the foreground"
	@echo "make test        unit tests (objs/, objs-asan/), the integration"
	@echo "                 suite against objs-asan/smtpgate, fuzz smoke"
	@echo "make deps        install the Debian packages the build needs"
	@echo "make test-deps   install the Debian packages the tests need"
	@echo "make asan        build objs-asan/ (sanitizers, debug)"
	@echo "make unit        build and run the unit tests of objs/"
	@echo "make unit-asan   the same for objs-asan/"
	@echo "make fuzz        build the libFuzzer harnesses into objs-fuzz/"
	@echo "make fuzz-smoke  run each harness for a bounded number of inputs"
	@echo "make bench       build smtpgate and bench/build/smtpload, install"
	@echo "                 what bench/run needs (bench/README.md)"
	@echo "make install     install objs/ under its --prefix"
	@echo "make clean       remove objs/, objs-asan/, objs-fuzz/"
