/*
 * elf_image.c - writes the x86_64 ELF shared object that carries a
 * provider's probes.
 *
 * What a USDT tracer needs from an object is small: a `.note.stapsdt` note per
 * probe naming the provider, the probe, the address of the probe site, the
 * address of a semaphore and how to find the arguments; the site itself, in
 * executable code; and, for dlopen(), a dynamic symbol table so the library
 * can find one function per probe.  This file writes exactly that, with
 * file offset == virtual address everywhere so the image is easy to read:
 *
 *   offset/vaddr  contents                      segment            section
 *   ------------  ----------------------------  -----------------  ---------------
 *   0x0000        ELF header (64 bytes)         PT_LOAD  R         -
 *   0x0040        5 program headers (56 each)   (same)             -
 *                 SysV hash table               (same)             .hash
 *                 dynamic symbols (24 each)     (same)             .dynsym
 *                 their names                   (same)             .dynstr
 *                 1 byte                        (same)             .stapsdt.base
 *   next page     one 16-byte slot per probe    PT_LOAD  R+X       .text
 *   next page     dynamic table                 PT_LOAD  R+W,      .dynamic
 *                                               PT_DYNAMIC
 *                 one 2-byte counter per probe  (same PT_LOAD)     .probes
 *   after that    (not loaded) one note/probe   -                  .note.stapsdt
 *                 section names                 -                  .shstrtab
 *                 10 section headers (64 each)  -                  -
 *   plus PT_GNU_STACK with flags R+W only: the stack is not executable.
 *
 * Each .text slot is one probe function:
 *     0f 1f 44 00 00    nopl 0x0(%rax,%rax,1)   <- the USDT site (note's pc)
 *     c3                ret
 *     cc ... cc         int3 padding up to 16 bytes
 * A tracer replaces the 5-byte NOP with a breakpoint or, on recent kernels,
 * with a call to a uprobe trampoline, which is much cheaper than the trap a
 * 1-byte NOP needs.  Because the site is the function's first instruction,
 * the probe's arguments are still in the SysV argument registers
 * (rdi, rsi, rdx, rcx, r8, r9), so the note's argument string names them,
 * with the width of the declared type: "-8@%rdi 4@%esi 1@%dl" is an int64,
 * a uint32 and a uint8.
 *
 * Each note (type 3, owner "stapsdt", 4-byte aligned) has this descriptor:
 *     u64 pc          link-time address of the site
 *     u64 base        link-time address of .stapsdt.base (tools use the
 *                     difference to the section's address to undo prelinking)
 *     u64 semaphore   link-time address of the probe's counter in .probes
 *     "provider\0" "probe\0" "args\0"
 * The semaphore lives in a private, writable, file-backed mapping, which is
 * what the kernel's uprobe reference counter (ref_ctr_offset) needs: a
 * tracer attaching the probe makes the kernel increment it in every process
 * that maps the object, including processes that map it later.
 *
 * The dynamic section holds DT_HASH, DT_SYMTAB, DT_STRTAB, DT_STRSZ and
 * DT_SYMENT: no relocations, no dependencies, no initialisers.  Section
 * headers are written too, because tools (readelf -n, bcc, bpftrace) find the
 * notes through them; bcc only looks at note sections that come after the
 * first executable section, hence the order above.
 *
 * The output is a pure function of the provider name and the probes (names,
 * argument types, declaration order): no timestamps, no addresses, no
 * uninitialised padding, so equal definitions give byte-identical files.
 */
#include <elf.h>
#include <stdlib.h>
#include <string.h>

#include "sdt_internal.h"

#define PAGE 0x1000u
#define PHNUM 5
#define NT_STAPSDT 3

enum {
  SEC_NULL,
  SEC_HASH,
  SEC_DYNSYM,
  SEC_DYNSTR,
  SEC_BASE,
  SEC_TEXT,
  SEC_DYNAMIC,
  SEC_PROBES,
  SEC_NOTE,
  SEC_SHSTRTAB,
  SEC_COUNT
};

static const char *const section_names[SEC_COUNT] = {
    "", ".hash", ".dynsym", ".dynstr", ".stapsdt.base", ".text",
    ".dynamic", ".probes", ".note.stapsdt", ".shstrtab",
};

/* The register holding argument `index` (0..5), by operand size. */
static const char *const arg_registers[MAX_ARGUMENTS][4] = {
    /* 8 bytes  4 bytes   2 bytes   1 byte */
    {"%rdi", "%edi", "%di", "%dil"},
    {"%rsi", "%esi", "%si", "%sil"},
    {"%rdx", "%edx", "%dx", "%dl"},
    {"%rcx", "%ecx", "%cx", "%cl"},
    {"%r8", "%r8d", "%r8w", "%r8b"},
    {"%r9", "%r9d", "%r9w", "%r9b"},
};

static const uint8_t site_code[] = {0x0f, 0x1f, 0x44, 0x00, 0x00, 0xc3};

#define DYN_COUNT 6 /* DT_HASH DT_STRTAB DT_SYMTAB DT_STRSZ DT_SYMENT DT_NULL */

static size_t align_up(size_t value, size_t alignment) {
  return (value + alignment - 1) & ~(alignment - 1);
}

size_t sdt_argspec(int arg_count, const ArgType_t *types, char *out) {
  size_t len = 0;
  out[0] = '\0';
  for (int i = 0; i < arg_count && i < MAX_ARGUMENTS; i++) {
    int type = (int)types[i];
    int size = type < 0 ? -type : type;
    int column = size == 8 ? 0 : size == 4 ? 1 : size == 2 ? 2 : 3;
    /* Longest piece: "-8@%r8d " = 8 bytes; 6 of them fit in 64. */
    const char *reg = arg_registers[i][column];
    char *p = out + len;
    if (i > 0)
      *p++ = ' ';
    if (type < 0)
      *p++ = '-';
    *p++ = (char)('0' + size);
    *p++ = '@';
    size_t reg_len = strlen(reg);
    memcpy(p, reg, reg_len);
    p += reg_len;
    *p = '\0';
    len = (size_t)(p - out);
  }
  return len;
}

/* The SysV ELF hash of a symbol name (System V ABI, "Hash Table"). */
static uint32_t elf_hash(const char *name) {
  uint32_t h = 0;
  for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
    h = (h << 4) + *p;
    uint32_t g = h & 0xf0000000u;
    if (g)
      h ^= g >> 24;
    h &= ~g;
  }
  return h;
}

struct layout {
  size_t count;
  size_t provider_len;
  size_t hash_off, hash_size, nbucket;
  size_t dynsym_off, dynsym_size;
  size_t dynstr_off, dynstr_size;
  size_t base_off;
  size_t ro_end;
  size_t text_off, text_size;
  size_t dynamic_off, dynamic_size;
  size_t probes_off, probes_size;
  size_t rw_end;
  size_t note_off, note_size;
  size_t shstrtab_off, shstrtab_size;
  size_t shdr_off;
  size_t total;
};

static size_t note_desc_size(size_t provider_len, const char *name, const char *args) {
  return 3 * 8 + provider_len + 1 + strlen(name) + 1 + strlen(args) + 1;
}

static void compute_layout(const char *provider, const struct sdt_image_probe *probes,
                           size_t count, struct layout *l) {
  memset(l, 0, sizeof(*l));
  l->count = count;
  l->provider_len = strlen(provider);

  size_t off = sizeof(Elf64_Ehdr) + PHNUM * sizeof(Elf64_Phdr);

  l->nbucket = count ? count : 1;
  l->hash_off = align_up(off, 8);
  l->hash_size = (2 + l->nbucket + (count + 1)) * sizeof(Elf64_Word);
  off = l->hash_off + l->hash_size;

  l->dynsym_off = align_up(off, 8);
  l->dynsym_size = (count + 1) * sizeof(Elf64_Sym);
  off = l->dynsym_off + l->dynsym_size;

  l->dynstr_off = off;
  l->dynstr_size = 1;
  for (size_t i = 0; i < count; i++)
    l->dynstr_size += strlen(probes[i].name) + 1;
  off += l->dynstr_size;

  l->base_off = off;
  off += 1;
  l->ro_end = off;

  l->text_off = align_up(off, PAGE);
  l->text_size = (count ? count : 1) * SDT_FUNC_SLOT;
  off = l->text_off + l->text_size;

  l->dynamic_off = align_up(off, PAGE);
  l->dynamic_size = DYN_COUNT * sizeof(Elf64_Dyn);
  l->probes_off = l->dynamic_off + l->dynamic_size;
  l->probes_size = count * 2;
  l->rw_end = l->probes_off + l->probes_size;

  l->note_off = align_up(l->rw_end, 4);
  for (size_t i = 0; i < count; i++) {
    char args[SDT_ARGSPEC_MAX];
    sdt_argspec(probes[i].arg_count, probes[i].arg_types, args);
    l->note_size += sizeof(Elf64_Nhdr) + 8 /* "stapsdt\0" */ +
                    align_up(note_desc_size(l->provider_len, probes[i].name, args), 4);
  }
  off = l->note_off + l->note_size;

  l->shstrtab_off = off;
  l->shstrtab_size = 0;
  for (int s = 0; s < SEC_COUNT; s++)
    l->shstrtab_size += strlen(section_names[s]) + 1;
  off += l->shstrtab_size;

  l->shdr_off = align_up(off, 8);
  l->total = l->shdr_off + SEC_COUNT * sizeof(Elf64_Shdr);
}

static void put(uint8_t *image, size_t off, const void *src, size_t size) {
  memcpy(image + off, src, size);
}

static void write_headers(uint8_t *img, const struct layout *l) {
  Elf64_Ehdr eh;
  memset(&eh, 0, sizeof(eh));
  memcpy(eh.e_ident, ELFMAG, SELFMAG);
  eh.e_ident[EI_CLASS] = ELFCLASS64;
  eh.e_ident[EI_DATA] = ELFDATA2LSB;
  eh.e_ident[EI_VERSION] = EV_CURRENT;
  eh.e_ident[EI_OSABI] = ELFOSABI_SYSV;
  eh.e_type = ET_DYN;
  eh.e_machine = EM_X86_64;
  eh.e_version = EV_CURRENT;
  eh.e_entry = 0;
  eh.e_phoff = sizeof(Elf64_Ehdr);
  eh.e_shoff = l->shdr_off;
  eh.e_flags = 0;
  eh.e_ehsize = sizeof(Elf64_Ehdr);
  eh.e_phentsize = sizeof(Elf64_Phdr);
  eh.e_phnum = PHNUM;
  eh.e_shentsize = sizeof(Elf64_Shdr);
  eh.e_shnum = SEC_COUNT;
  eh.e_shstrndx = SEC_SHSTRTAB;
  put(img, 0, &eh, sizeof(eh));

  Elf64_Phdr ph[PHNUM];
  memset(ph, 0, sizeof(ph));
  /* Read-only: headers, hash, symbols, names, .stapsdt.base. */
  ph[0].p_type = PT_LOAD;
  ph[0].p_flags = PF_R;
  ph[0].p_offset = ph[0].p_vaddr = ph[0].p_paddr = 0;
  ph[0].p_filesz = ph[0].p_memsz = l->ro_end;
  ph[0].p_align = PAGE;
  /* Code: the probe sites. */
  ph[1].p_type = PT_LOAD;
  ph[1].p_flags = PF_R | PF_X;
  ph[1].p_offset = ph[1].p_vaddr = ph[1].p_paddr = l->text_off;
  ph[1].p_filesz = ph[1].p_memsz = l->text_size;
  ph[1].p_align = PAGE;
  /* Data: the dynamic table and the semaphores, backed by the file. */
  ph[2].p_type = PT_LOAD;
  ph[2].p_flags = PF_R | PF_W;
  ph[2].p_offset = ph[2].p_vaddr = ph[2].p_paddr = l->dynamic_off;
  ph[2].p_filesz = ph[2].p_memsz = l->rw_end - l->dynamic_off;
  ph[2].p_align = PAGE;
  ph[3].p_type = PT_DYNAMIC;
  ph[3].p_flags = PF_R | PF_W;
  ph[3].p_offset = ph[3].p_vaddr = ph[3].p_paddr = l->dynamic_off;
  ph[3].p_filesz = ph[3].p_memsz = l->dynamic_size;
  ph[3].p_align = 8;
  ph[4].p_type = PT_GNU_STACK;
  ph[4].p_flags = PF_R | PF_W;
  ph[4].p_align = 16;
  put(img, sizeof(Elf64_Ehdr), ph, sizeof(ph));
}

static void write_dynamic(uint8_t *img, const struct sdt_image_probe *probes,
                          const struct layout *l) {
  /* .dynstr and .dynsym: symbol i+1 is probe i's function. */
  size_t name_off = 1;
  img[l->dynstr_off] = '\0';
  for (size_t i = 0; i < l->count; i++) {
    size_t len = strlen(probes[i].name);
    put(img, l->dynstr_off + name_off, probes[i].name, len + 1);

    Elf64_Sym sym;
    memset(&sym, 0, sizeof(sym));
    sym.st_name = (Elf64_Word)name_off;
    sym.st_info = ELF64_ST_INFO(STB_GLOBAL, STT_FUNC);
    sym.st_other = STV_DEFAULT;
    sym.st_shndx = SEC_TEXT;
    sym.st_value = l->text_off + i * SDT_FUNC_SLOT;
    sym.st_size = sizeof(site_code);
    put(img, l->dynsym_off + (i + 1) * sizeof(Elf64_Sym), &sym, sizeof(sym));
    name_off += len + 1;
  }

  /* .hash: nbucket, nchain, buckets, chains (chain index == symbol index). */
  Elf64_Word *hash = (Elf64_Word *)(void *)(img + l->hash_off);
  Elf64_Word *bucket = hash + 2;
  Elf64_Word *chain = bucket + l->nbucket;
  hash[0] = (Elf64_Word)l->nbucket;
  hash[1] = (Elf64_Word)(l->count + 1);
  for (size_t i = 0; i < l->count; i++) {
    size_t b = elf_hash(probes[i].name) % l->nbucket;
    chain[i + 1] = bucket[b];
    bucket[b] = (Elf64_Word)(i + 1);
  }

  /* .dynamic */
  const Elf64_Dyn dyn[DYN_COUNT] = {
      {.d_tag = DT_HASH, .d_un.d_ptr = l->hash_off},
      {.d_tag = DT_STRTAB, .d_un.d_ptr = l->dynstr_off},
      {.d_tag = DT_SYMTAB, .d_un.d_ptr = l->dynsym_off},
      {.d_tag = DT_STRSZ, .d_un.d_val = l->dynstr_size},
      {.d_tag = DT_SYMENT, .d_un.d_val = sizeof(Elf64_Sym)},
      {.d_tag = DT_NULL, .d_un.d_val = 0},
  };
  put(img, l->dynamic_off, dyn, sizeof(dyn));
}

static void write_text(uint8_t *img, const struct layout *l) {
  memset(img + l->text_off, 0xcc, l->text_size);
  for (size_t i = 0; i < l->count; i++)
    put(img, l->text_off + i * SDT_FUNC_SLOT, site_code, sizeof(site_code));
}

static void write_notes(uint8_t *img, const char *provider,
                        const struct sdt_image_probe *probes, const struct layout *l) {
  size_t off = l->note_off;
  for (size_t i = 0; i < l->count; i++) {
    char args[SDT_ARGSPEC_MAX];
    sdt_argspec(probes[i].arg_count, probes[i].arg_types, args);
    size_t desc_size = note_desc_size(l->provider_len, probes[i].name, args);

    Elf64_Nhdr nh;
    nh.n_namesz = 8;
    nh.n_descsz = (Elf64_Word)desc_size;
    nh.n_type = NT_STAPSDT;
    put(img, off, &nh, sizeof(nh));
    off += sizeof(nh);
    put(img, off, "stapsdt", 8);
    off += 8;

    uint64_t addrs[3] = {
        l->text_off + i * SDT_FUNC_SLOT, /* pc */
        l->base_off,                     /* base */
        l->probes_off + i * 2,           /* semaphore */
    };
    put(img, off, addrs, sizeof(addrs));
    size_t p = off + sizeof(addrs);
    put(img, p, provider, l->provider_len + 1);
    p += l->provider_len + 1;
    size_t name_len = strlen(probes[i].name);
    put(img, p, probes[i].name, name_len + 1);
    p += name_len + 1;
    put(img, p, args, strlen(args) + 1);
    off += align_up(desc_size, 4); /* padding stays zero (calloc) */
  }
}

static void write_sections(uint8_t *img, const struct layout *l) {
  size_t name_index[SEC_COUNT];
  size_t off = 0;
  for (int s = 0; s < SEC_COUNT; s++) {
    size_t len = strlen(section_names[s]);
    put(img, l->shstrtab_off + off, section_names[s], len + 1);
    name_index[s] = off;
    off += len + 1;
  }

  Elf64_Shdr sh[SEC_COUNT];
  memset(sh, 0, sizeof(sh));
  for (int s = 0; s < SEC_COUNT; s++)
    sh[s].sh_name = (Elf64_Word)name_index[s];

#define SECTION(idx, type, flags, off_, size_, align_, entsize_)                          \
  do {                                                                                    \
    sh[idx].sh_type = (type);                                                             \
    sh[idx].sh_flags = (flags);                                                           \
    sh[idx].sh_offset = (off_);                                                           \
    sh[idx].sh_addr = ((flags) & SHF_ALLOC) ? (off_) : 0;                                 \
    sh[idx].sh_size = (size_);                                                            \
    sh[idx].sh_addralign = (align_);                                                      \
    sh[idx].sh_entsize = (entsize_);                                                      \
  } while (0)

  SECTION(SEC_HASH, SHT_HASH, SHF_ALLOC, l->hash_off, l->hash_size, 8, 4);
  sh[SEC_HASH].sh_link = SEC_DYNSYM;
  SECTION(SEC_DYNSYM, SHT_DYNSYM, SHF_ALLOC, l->dynsym_off, l->dynsym_size, 8,
          sizeof(Elf64_Sym));
  sh[SEC_DYNSYM].sh_link = SEC_DYNSTR;
  sh[SEC_DYNSYM].sh_info = 1; /* index of the first non-local symbol */
  SECTION(SEC_DYNSTR, SHT_STRTAB, SHF_ALLOC, l->dynstr_off, l->dynstr_size, 1, 0);
  SECTION(SEC_BASE, SHT_PROGBITS, SHF_ALLOC, l->base_off, 1, 1, 0);
  SECTION(SEC_TEXT, SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, l->text_off, l->text_size,
          SDT_FUNC_SLOT, 0);
  SECTION(SEC_DYNAMIC, SHT_DYNAMIC, SHF_ALLOC | SHF_WRITE, l->dynamic_off, l->dynamic_size,
          8, sizeof(Elf64_Dyn));
  sh[SEC_DYNAMIC].sh_link = SEC_DYNSTR;
  SECTION(SEC_PROBES, SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, l->probes_off, l->probes_size,
          2, 0);
  SECTION(SEC_NOTE, SHT_NOTE, 0, l->note_off, l->note_size, 4, 0);
  SECTION(SEC_SHSTRTAB, SHT_STRTAB, 0, l->shstrtab_off, l->shstrtab_size, 1, 0);
#undef SECTION

  put(img, l->shdr_off, sh, sizeof(sh));
}

int sdt_image_build(const char *provider, const struct sdt_image_probe *probes, size_t count,
                    struct sdt_image *out, const char **why) {
  memset(out, 0, sizeof(*out));
#if !defined(__x86_64__)
  (void)provider;
  (void)probes;
  (void)count;
  *why = "probe sites are generated for x86_64 only";
  return -1;
#else
  if (count > SDT_MAX_PROBES) {
    *why = "too many probes";
    return -1;
  }
  struct layout l;
  compute_layout(provider, probes, count, &l);
  uint8_t *img = calloc(1, l.total);
  if (!img) {
    *why = "out of memory";
    return -1;
  }
  write_headers(img, &l);
  write_dynamic(img, probes, &l);
  write_text(img, &l);
  write_notes(img, provider, probes, &l);
  write_sections(img, &l);

  out->data = img;
  out->size = l.total;
  out->text_vaddr = l.text_off;
  out->probes_vaddr = l.probes_off;
  return 0;
#endif
}

void sdt_image_free(struct sdt_image *image) {
  if (image) {
    free(image->data);
    image->data = NULL;
    image->size = 0;
  }
}
