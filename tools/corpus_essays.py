"""Short essays written for the shipped demo corpus (original text, public domain).

`corpus_gen.py` mixes these with procedurally generated documents. The last
`EVAL_ESSAYS` essays go to the held-out eval file only.
"""

ESSAYS = (
    """On Rivers

A river is never the same river twice, the old saying goes, and anyone who has lived beside one knows that the saying is only half a joke. In spring the water comes down brown and loud, carrying branches, foam and the occasional fence post from some farm upstream. By midsummer it has thinned to a clear, slow ribbon that barely covers the stones, and children wade across it in places where, three months earlier, a grown man would have been swept off his feet.

What stays the same is the shape of the valley. The river has been cutting the same bends for thousands of years, and the towns along it have learned where the floods reach and where they do not. The oldest houses stand a little way up the slope, on ground that stayed dry in the worst years anyone remembered. The newer houses, built in calmer decades, sit closer to the bank, and their owners keep sandbags in the shed.

There is a kind of patience that comes from watching a river. It does not hurry to the sea, and it does not stop. It wears down rock a grain at a time, and it carries soil from the hills to the plain so slowly that no single person ever sees the work being done. Yet over a lifetime the changes are plain: a sandbar appears where there was deep water, an island grows willows, a ford becomes a pool. The river keeps its own accounts, and it is never in a rush to settle them.""",
    """The Making of Bread

Bread asks for very little and gives back a great deal. Flour, water, salt and a little yeast are enough, provided you are willing to wait. Most of the work of bread is not work at all but time: the dough rests, the yeast eats and breathes, and the gluten slowly lines itself up into the elastic web that will hold the bubbles of gas.

A beginner tends to add too much flour. The dough feels sticky and unfinished, and the natural response is to dust the table again and again until it stops clinging to the fingers. The result is a dense, dry loaf. Experienced bakers learn to tolerate the stickiness, to fold the dough over itself with wet hands, and to let the rest periods do what kneading cannot.

The oven is the last test. A hot oven sets the crust quickly and gives the loaf a final rise, which bakers call oven spring. A little steam in the first minutes keeps the surface soft long enough for the loaf to expand, and then the steam is let out so the crust can brown and crackle. When the loaf comes out, it should sound hollow when tapped on the bottom. It should also be left alone to cool, which is the hardest instruction in any recipe, because the smell of fresh bread fills the kitchen and nobody in the house wants to wait.""",
    """Lighthouses

For most of history a lighthouse was a fire on a hill. Later it became a tower with a lamp, and later still a tower with a lamp and a lens, a great cage of glass prisms that gathered the light and threw it out in a narrow beam across the water. Each light had its own pattern, a certain number of flashes in a certain number of seconds, so that a sailor who counted carefully could tell one headland from another in the dark.

The keepers lived lonely and orderly lives. They trimmed wicks, polished brass, wound the clockwork that turned the lens, and wrote in the logbook every evening: the weather, the ships that passed, the time the lamp was lit and the time it was put out. Many of those logbooks survive, and reading them is a strange experience. Page after page records wind from the southwest, light rain, two steamers bound north, lamp lit at sunset. Then, without warning, a single line describes a wreck on the reef, a night of rescue in an open boat, and the names of the men who were saved.

Today almost every light is automatic. The lamps switch themselves on, the lenses turn on electric motors, and the towers stand empty. They are still useful, and they are still beautiful, but the logbooks have stopped.""",
    """The Public Library

A public library is one of the few places left where nobody expects you to buy anything. You may walk in out of the rain, sit in a chair by the window, and read a newspaper for an hour, and no one will ask what you want. For a child this freedom can be astonishing. The shelves go up higher than you can reach, the books are arranged by a system of numbers that seems at first like a secret code, and every one of them may be carried home for three weeks for nothing at all.

The people who work there are not guards of the books but guides to them. Ask a librarian a question and you will often get a better question in return: not only where is the book on birds, but which birds, seen where, and for what purpose. The answer might be a field guide, a recording of songs, or an old county survey that lists every nest found in a particular wood a hundred years ago.

Libraries change with the times. They lend films, teach people to use computers, and host clubs for chess and knitting. But the central idea stays the same. Knowledge that is shared does not shrink; it grows, and a town that keeps its library open is making a promise to every reader it has not met yet.""",
    """Walking in Winter

The first thing you notice on a winter walk is the quiet. Snow absorbs sound, and the usual noise of the road and the village seems to fall away after a few hundred steps. The second thing you notice is how much of the land you can suddenly see. With the leaves gone, the woods open up, and the shape of the hills shows through the bare trees like the bones of a hand.

Tracks tell stories in the snow. A line of small paired prints crossing the path belongs to a rabbit; a neat single line, each print set in front of the last, belongs to a fox. Near the stream there may be the splayed marks of a heron, and under the hedge the tiny stitching of mice, running from one hidden tunnel to the next. Every track ends somewhere, and following one for a while teaches more about an animal than any book.

Winter walking needs a little care. The light fades early, so it is wise to set out in the morning and to turn back before the sun drops behind the ridge. Warm socks matter more than a heavy coat, and a flask of tea matters more than either. But the reward is a kind of clarity that summer never quite offers: cold air, long shadows, and a world reduced to a few clean colours.""",
    """The Clockmaker's Trade

A mechanical clock is a machine for dividing a falling weight, or an unwinding spring, into equal pieces. The escapement does the dividing. It lets the gear train move forward one tooth at a time, and the pendulum or balance wheel decides how long each tooth must wait. Everything else in the clock, the wheels, the pinions, the hands and the dial, exists to count those small steps and show the count to the world.

Old clockmakers made nearly every part themselves. They cut wheels on a dividing engine, filed the teeth by hand, hardened the steel pivots, and polished them until they shone. A good workshop smelled of oil and brass shavings, and the bench was covered in tools so small that a sneeze could lose one for a week.

Repairing an old clock is a lesson in humility. The maker is usually long dead, yet the logic of the work is still there to be read: a bushing added by a later hand, a tooth bent and straightened, a scratch on the plate where someone marked the position of the beat. Each repair is a conversation with the people who kept the clock going before you, and a message to those who will open it after you are gone.""",
    """Bees

A honeybee colony behaves less like a crowd of insects than like a single animal spread across thousands of bodies. No bee is in charge. The queen lays eggs, but she does not give orders. Decisions about where to forage, when to swarm and where to build a new home emerge from countless small exchanges between workers, each one responding to what the bees around her are doing.

The most famous of these exchanges is the waggle dance. A forager that has found a rich patch of flowers returns to the hive and runs a short figure on the comb, waggling her body along a straight line. The angle of that line, measured against the vertical, tells her sisters the direction of the flowers relative to the sun. The length of the waggle tells them the distance. Other bees follow her, smell the scent she carries, and fly out to check for themselves.

Beekeepers learn to read the colony's mood. A calm hive hums at a low, even pitch; an upset one rises to a sharper note. On a warm afternoon in early summer the keeper lifts a frame heavy with capped honey, and for a moment the whole patient system is visible at once: the cells of brood, the rings of pollen, and the sealed stores that will carry the colony through the winter.""",
    """Maps

Every map is a set of choices about what to leave out. A road map ignores the trees; a geological map ignores the roads; a map of a city's bus routes may bend the streets into straight lines and even angles, because a traveller needs to know the order of the stops, not the true shape of the town. The best maps are honest about these choices, and the worst pretend that they show the world exactly as it is.

Making a map by hand teaches this quickly. Walk around a small park with a notebook and a compass and try to draw it. You will measure distances by counting paces, take bearings on the bandstand and the gate, and discover that your first sketch does not close: the path you followed all the way round ends twenty paces away from where it began. Finding and sharing out that error is the oldest problem in surveying.

Old maps are full of guesses. Coastlines trail off into dotted lines, rivers are drawn from travellers' reports, and blank spaces are filled with decorations. It is easy to laugh at them, but they were made by people doing their best with what they knew, and in a few hundred years our own maps may look just as strange.""",
    """Gardens in Dry Summers

A long dry summer changes how a gardener thinks. In a wet year the main problems are slugs and weeds; in a dry one the question is simply what will survive. Lawns turn the colour of straw, the soil cracks into plates, and plants that looked sturdy in May begin to droop by noon.

The sensible response is to water less often but more deeply. A light sprinkle every evening wets only the surface, and roots stay shallow, where the soil dries fastest. A thorough soaking once or twice a week sends the water down, and the roots follow it. A layer of mulch, whether bark, straw or old compost, keeps the sun off the soil and slows the loss of moisture.

Some plants hardly notice the drought. Lavender, thyme and rosemary come from dry hillsides and seem to enjoy the heat. Their leaves are small, grey or waxy, and they smell strongest on the hottest days. A gardener who plants more of them after a dry year is not giving up, only learning from the weather, which is what gardeners have always done.""",
    """Letters

Before the telephone, distance was measured in letters. A family that moved across the sea might write home once a month, and each letter would take weeks to arrive. News came in large, slow pieces: a birth, a harvest, a death, a new house, all reported long after they had happened. The writers knew this, and they wrote carefully, describing ordinary days in detail because the reader had no other way to see them.

Reading such letters now, one notices how much space is given to the weather and to health. These were not small talk. Weather decided whether the crops would come in, and health decided almost everything else. A line such as we are all well, thank God, and the wheat is standing tall carried more meaning than it seems.

Letters also kept a record that conversation cannot. A letter could be read again, shown to neighbours, kept in a drawer and found by grandchildren. Many of the best histories of ordinary life are built from bundles of letters tied with string, written by people who never imagined that anyone but the person they loved would ever read them.""",
)

# The last EVAL_ESSAYS essays are held out for the eval split.
EVAL_ESSAYS = 2
