/* Runs usdt_forms.c's main from a shared library (built with -Dmain=forms_main), so its probes live in
 * a .so mapped at a random address. */
int forms_main(int argc, char **argv);
int main(int argc, char **argv) { return forms_main(argc, argv); }
