# Installs libswapper as a C/C++ library:
#
#   make install PREFIX=/opt/swapper        (default /usr/local; DESTDIR is honoured)
#
# lib/libswapper.so.$(VERSION) with the libswapper.so.$(SOVER) (soname) and libswapper.so
# links, lib/libswapper.a, include/swapper.h, include/swapper.hpp and
# lib/pkgconfig/swapper.pc for that prefix.
#
# The release build is made with cargo in $(CARGO_TARGET_DIR) (default ./target), which
# is a no-op when it is up to date. `make` alone builds it and adds the soname link
# (libswapper.so.$(SOVER) -> libswapper.so) next to it, so that a program linked with
# -L$(LIB_DIR) -lswapper finds the library at run time (with -Wl,-rpath or LD_LIBRARY_PATH). BUILD=0 skips cargo and installs what LIB_DIR holds
# (the tests use it to reuse the build cargo test just made).

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
DESTDIR ?=
CARGO ?= cargo
CARGO_TARGET_DIR ?= target
LIB_DIR ?= $(CARGO_TARGET_DIR)/release
BUILD ?= 1
INSTALL ?= install

VERSION := $(shell sed -n 's/^version = "\([^"]*\)"/\1/p' Cargo.toml | head -n 1)
# The soname's version: build.rs applies the rule (cargo-c's) and writes the result into
# the header, whose committed copy tests/header.rs keeps equal to a fresh build's.
SOVER := $(shell sed -n 's/^\#define SWAPPER_SOVERSION "\([^"]*\)"/\1/p' include/swapper.h)

.PHONY: all build install uninstall print-sover

all: build

build:
	@test -n "$(SOVER)" || { echo "no SWAPPER_SOVERSION in include/swapper.h" >&2; exit 1; }
ifeq ($(BUILD),1)
	$(CARGO) build --release --lib --target-dir "$(CARGO_TARGET_DIR)"
endif
	@test -f "$(LIB_DIR)/libswapper.so" && test -f "$(LIB_DIR)/libswapper.a" || \
	  { echo "no libswapper.so and libswapper.a in $(LIB_DIR)" >&2; exit 1; }
	ln -sf libswapper.so "$(LIB_DIR)/libswapper.so.$(SOVER)"

install: build
	$(INSTALL) -d "$(DESTDIR)$(LIBDIR)" "$(DESTDIR)$(INCLUDEDIR)" "$(DESTDIR)$(PKGCONFIGDIR)"
	$(INSTALL) -m 755 "$(LIB_DIR)/libswapper.so" "$(DESTDIR)$(LIBDIR)/libswapper.so.$(VERSION)"
	test "$(SOVER)" = "$(VERSION)" || ln -sf "libswapper.so.$(VERSION)" "$(DESTDIR)$(LIBDIR)/libswapper.so.$(SOVER)"
	ln -sf "libswapper.so.$(SOVER)" "$(DESTDIR)$(LIBDIR)/libswapper.so"
	$(INSTALL) -m 644 "$(LIB_DIR)/libswapper.a" "$(DESTDIR)$(LIBDIR)/libswapper.a"
	$(INSTALL) -m 644 include/swapper.h include/swapper.hpp "$(DESTDIR)$(INCLUDEDIR)/"
	printf '%s\n' \
	  'prefix=$(PREFIX)' \
	  'libdir=$(LIBDIR)' \
	  'includedir=$(INCLUDEDIR)' \
	  '' \
	  'Name: swapper' \
	  'Description: Swap training tensors between memory and NVMe files (async O_DIRECT I/O engine, ZeRO-Infinity parameter swapper)' \
	  'Version: $(VERSION)' \
	  'Libs: -L$${libdir} -lswapper' \
	  'Libs.private: -lpthread -ldl -lm' \
	  'Cflags: -I$${includedir}' \
	  > "$(DESTDIR)$(PKGCONFIGDIR)/swapper.pc"
	chmod 644 "$(DESTDIR)$(PKGCONFIGDIR)/swapper.pc"

uninstall:
	rm -f "$(DESTDIR)$(LIBDIR)/libswapper.so.$(VERSION)" "$(DESTDIR)$(LIBDIR)/libswapper.so.$(SOVER)" \
	  "$(DESTDIR)$(LIBDIR)/libswapper.so" "$(DESTDIR)$(LIBDIR)/libswapper.a" \
	  "$(DESTDIR)$(INCLUDEDIR)/swapper.h" "$(DESTDIR)$(INCLUDEDIR)/swapper.hpp" \
	  "$(DESTDIR)$(PKGCONFIGDIR)/swapper.pc"

# Prints the soname version (tests and scripts use it).
print-sover:
	@echo $(SOVER)
