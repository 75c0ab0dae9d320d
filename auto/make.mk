# ---------------------------------------------------------------------
# The rules below are copied verbatim from auto/make.mk.
#
# Every core/*.c but core/smtpgate.c (main) and every modules/NAME/*.c of
# a compiled-in module goes into $(B)/libsmtpgate.a, together with the
# generated $(B)/sg_modules.c; the binary is smtpgate.o + the library.
# Unit tests (t/unit/test_*.c) and fuzz harnesses (fuzz/fuzz_*.c) link
# against the same library.

SHELL = /bin/sh

ifeq ($(wildcard configure auto/make.mk),)
$(error run this Makefile from the source root: make -f $(B)/Makefile)
endif

INCS          = -Icore -I$(B) $(MODULES:%=-Imodules/%)

CORE_SRCS    := $(sort $(filter-out core/smtpgate.c,$(wildcard core/*.c)))
MOD_SRCS     := $(sort $(wildcard $(MODULES:%=modules/%/*.c)))
LIB_OBJS     := $(patsubst %.c,$(B)/%.o,$(CORE_SRCS) $(MOD_SRCS)) \
                $(B)/sg_modules.o
MAIN_OBJ     := $(B)/core/smtpgate.o
LIB          := $(B)/libsmtpgate.a

UNIT_SRCS    := $(sort $(wildcard t/unit/test_*.c))
UNIT_BINS    := $(UNIT_SRCS:%.c=$(B)/%)
FUZZ_SRCS    := $(sort $(wildcard fuzz/fuzz_*.c))
FUZZ_BINS    := $(FUZZ_SRCS:%.c=$(B)/%)

SRC_OBJS     := $(patsubst %.c,$(B)/%.o,$(CORE_SRCS) $(MOD_SRCS) \
                  core/smtpgate.c $(UNIT_SRCS) $(FUZZ_SRCS))

UNIT_TIMEOUT ?= 120
FUZZ_RUNS    ?= 20000
FUZZ_TIME    ?= 20

ifeq ($(V),1)
Q   :=
say := @true
else
Q   := @
say := @printf '  %-6s %s\n'
endif

.PHONY: all lib unit install clean fuzz fuzz-smoke
.DELETE_ON_ERROR:

all: $(B)/smtpgate

lib: $(LIB)


# --- compiling --------------------------------------------------------

# Helpers for unit tests and fuzz harnesses may live beside them.
$(B)/t/unit/%.o: EXTRA_INCS = -It/unit
$(B)/fuzz/%.o:   EXTRA_INCS = -Ifuzz

$(SRC_OBJS): $(B)/%.o: %.c $(B)/build.flags
	$(say) CC $<
	@mkdir -p $(@D)
	$(Q)$(CC) $(CFLAGS) $(INCS) $(EXTRA_INCS) -MMD -MP -c -o $@ $<

$(B)/sg_modules.o: $(B)/sg_modules.c $(B)/build.flags
	$(say) CC $<
	$(Q)$(CC) $(CFLAGS) $(INCS) -MMD -MP -c -o $@ $<

-include $(SRC_OBJS:.o=.d) $(B)/sg_modules.d


# --- linking ----------------------------------------------------------

# The archive is rebuilt from scratch, and whenever its member list
# changes, so that a deleted or dropped source leaves no stale object.
LIB_LIST := $(B)/libsmtpgate.list
ifneq ($(strip $(LIB_OBJS)),$(strip $(file <$(LIB_LIST))))
$(file >$(LIB_LIST),$(strip $(LIB_OBJS)))
endif

$(LIB): $(LIB_OBJS) $(LIB_LIST)
	$(say) AR $@
	$(Q)rm -f $@
	$(Q)ar qcs $@ $(LIB_OBJS)

$(B)/smtpgate: $(MAIN_OBJ) $(LIB)
	$(say) LINK $@
	$(Q)$(CC) $(LDFLAGS) -o $@ $(MAIN_OBJ) $(LIB) $(LIBS)


# --- unit tests -------------------------------------------------------

# Each t/unit/test_NAME.c is a program of its own; auto/unit runs them
# all, each under a timeout, and fails if any one fails.
$(UNIT_BINS): $(B)/t/unit/%: $(B)/t/unit/%.o $(LIB)
	$(say) LINK $@
	$(Q)$(CC) $(LDFLAGS) -o $@ $< $(LIB) $(LIBS)

unit: $(UNIT_BINS)
	@UNIT_TIMEOUT=$(UNIT_TIMEOUT) sh auto/unit "$(B)" $(UNIT_BINS)


# --- fuzzing ----------------------------------------------------------

ifeq ($(FUZZER),YES)

$(FUZZ_BINS): $(B)/fuzz/%: $(B)/fuzz/%.o $(LIB)
	$(say) LINK $@
	$(Q)$(CC) $(LDFLAGS) $(FUZZ_LDFLAGS) -o $@ $< $(LIB) $(LIBS)

fuzz: $(FUZZ_BINS)
	@echo "fuzz: $(words $(FUZZ_BINS)) harness(es) in $(B)/fuzz/"

# Each harness is a target of its own, so that make -j runs them side by
# side; auto/fuzz-smoke keeps the checked-in corpus read-only.
FUZZ_SMOKES := $(FUZZ_BINS:%=%.smoke)
.PHONY: $(FUZZ_SMOKES)

$(FUZZ_SMOKES): %.smoke: %
	@FUZZ_RUNS=$(FUZZ_RUNS) FUZZ_TIME=$(FUZZ_TIME) sh auto/fuzz-smoke "$(B)" $<

fuzz-smoke: $(FUZZ_SMOKES)
	@echo "fuzz-smoke: $(words $(FUZZ_BINS)) harness(es) passed"

else

fuzz fuzz-smoke:
	@echo "$@: $(B) was not configured for fuzzing;" \
	      "use ./configure --with-cc=clang --with-fuzzer, or make $@" \
	      "at the top, which builds objs-fuzz/" >&2
	@exit 1

endif


# --- install, clean ---------------------------------------------------

# The prefix layout: sbin/smtpgate, conf/, logs/, and share/ with the
# systemd unit and the logrotate file configure wrote.  Every file of conf/
# (not its subdirectories) is installed as NAME.default, and as NAME too
# unless NAME is already there: an edited configuration is never lost.
install: all
	install -d '$(DESTDIR)$(PREFIX)sbin' '$(DESTDIR)$(PREFIX)logs' \
	    '$(DESTDIR)$(CONF_DIR)' '$(DESTDIR)$(ERROR_LOG_DIR)' \
	    '$(DESTDIR)$(PID_DIR)'
	install -m 755 $(B)/smtpgate '$(DESTDIR)$(SBIN_PATH)'
	@for f in conf/*; do \
	    [ -f "$$f" ] || continue; \
	    case "$$f" in \
	        conf/smtpgate.conf) d='$(DESTDIR)$(CONF_PATH)' ;; \
	        *) d='$(DESTDIR)$(CONF_DIR)'"$${f#conf/}" ;; \
	    esac; \
	    echo "install -m 644 $$f $$d.default"; \
	    install -m 644 "$$f" "$$d.default" || exit 1; \
	    if [ ! -e "$$d" ]; then \
	        echo "install -m 644 $$f $$d"; \
	        install -m 644 "$$f" "$$d" || exit 1; \
	    fi; \
	done
	install -d '$(DESTDIR)$(PREFIX)share/systemd' \
	    '$(DESTDIR)$(PREFIX)share/logrotate'
	install -m 644 $(B)/smtpgate.service \
	    '$(DESTDIR)$(PREFIX)share/systemd/smtpgate.service'
	install -m 644 $(B)/smtpgate.logrotate \
	    '$(DESTDIR)$(PREFIX)share/logrotate/smtpgate'
	@# The default configuration names a demo certificate; make one for
	@# the installed tree if it has none, never copying a private key.
	@if [ ! -s '$(DESTDIR)$(CONF_DIR)demo/cert.pem' ]; then \
	    install -d -m 755 '$(DESTDIR)$(CONF_DIR)demo' && \
	    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
	        -nodes -days 3650 -subj /CN=localhost \
	        -keyout '$(DESTDIR)$(CONF_DIR)demo/key.pem' \
	        -out '$(DESTDIR)$(CONF_DIR)demo/cert.pem' 2>/dev/null && \
	    chmod 600 '$(DESTDIR)$(CONF_DIR)demo/key.pem' && \
	    echo "created the demo certificate $(CONF_DIR)demo/cert.pem"; \
	fi

# Keeps what configure wrote: make -f $(B)/Makefile works again at once.
clean:
	rm -rf $(B)/core $(B)/modules $(B)/t $(B)/fuzz $(B)/smtpgate $(LIB) \
	    $(LIB_LIST) $(B)/sg_modules.o $(B)/sg_modules.d
