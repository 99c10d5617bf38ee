# A tour of the demo recording in gdb. Start the server first:
#   krr-tui replay tests/fixtures/demo.krr --gdb 127.0.0.1:1234
# then:
#   gdb -q -x examples/gdb/demo.gdb
# The server offers the kernel ELF embedded in the recording, so gdb loads its
# symbols and DWARF on connect (a warning about file transfer is expected).
set pagination off
set confirm off
target remote 127.0.0.1:1234

echo \n--- where the recording starts\n
monitor when

echo \n--- break where the kernel writes to the console, and run to the third call\n
break uart_write
continue
continue
continue
echo \n--- the arguments and a local, through DWARF\n
print n
print s
next
next
print i
bt

echo \n--- one instruction back, then back to this call's entry and to the call before\n
reverse-stepi
monitor when
reverse-continue
monitor when
reverse-continue
print s

echo \n--- the events around here\n
monitor events 3

echo \n--- who changes `ticks`? (a write watchpoint, forwards then backwards)\n
delete
watch ticks
continue
reverse-continue
delete

echo \n--- jump to event 500, then let gdb read the new position\n
monitor goto 500
maint flush register-cache
monitor when
bt 1

detach
